"""The shop's HTTP front, served by a real server on loopback and called by a real client:
commands answer 202 at once and their sagas settle, queries read the read model, invalid
requests get a 422 that says what was wrong, and the OpenAPI schema lists every route."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from examples.ecommerce.http import create_app
from examples.ecommerce.shop import CATALOG, Shop, open_shop

from pysaga import Envelope

from ..docs.test_snippets import load, pasted_output
from ..services import free_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["choreographed", "orchestrated"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A shop, its HTTP front on a uvicorn server on a free loopback port, and a client."""
    async with open_shop(tmp_path, style=request.param) as shop:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(shop.app), log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                while True:
                    if server.started:
                        break
                    await anyio.sleep(0.01)
            base_url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base_url) as client:
                yield shop, client, base_url
            server.should_exit = True
        sock.close()


async def settle(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """GET *url* until its order is no longer pending."""
    with anyio.fail_after(20):
        while True:
            response = await client.get(url)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] != "pending":
                return body
            await anyio.sleep(0.02)


def order(customer: str, *lines: tuple[str, int], order_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": customer,
        "lines": [{"sku": sku, "qty": qty} for sku, qty in lines],
    }
    if order_id is not None:
        body["order_id"] = order_id
    return body


async def test_orders_are_accepted_at_once_and_settle(served: Any) -> None:
    """POST answers 202 with the id and a Location that can be followed at once; the
    orders end completed or rejected (with the reason); lists and stock follow."""
    shop, client, _ = served
    before = (await client.get("/stock")).json()
    assert before == {sku: units for sku, (_, units) in CATALOG.items()}

    good = await client.post("/orders", json=order("alice", ("book", 2), ("lamp", 1)))
    assert good.status_code == 202, good.text
    accepted = good.json()
    assert accepted["status"] == "accepted"
    assert good.headers["location"] == accepted["href"] == f"/orders/{accepted['order_id']}"
    first = await client.get(good.headers["location"])  # read your own write
    assert first.status_code == 200
    assert first.json()["status"] in ("pending", "completed")

    declined = await client.post("/orders", json=order("dave", ("mug", 2)))
    short = await client.post("/orders", json=order("bob", ("lamp", 3)))
    assert declined.status_code == short.status_code == 202

    done = await settle(client, good.headers["location"])
    assert done == {
        "order_id": accepted["order_id"],
        "customer_id": "alice",
        "items": {"book": 2, "lamp": 1},
        "amount": "74.00",
        "status": "completed",
        "reason": "",
    }
    rejected = await settle(client, declined.headers["location"])
    assert rejected["status"] == "rejected"
    assert rejected["reason"]
    out_of_stock = await settle(client, short.headers["location"])
    assert out_of_stock["status"] == "rejected"
    assert out_of_stock["reason"]

    completed = (await client.get("/orders", params={"status": "completed"})).json()
    assert [o["order_id"] for o in completed] == [accepted["order_id"]]
    rejected_ids = {o["order_id"] for o in (await client.get("/orders?status=rejected")).json()}
    assert rejected_ids == {declined.json()["order_id"], short.json()["order_id"]}
    assert (await client.get("/orders", params={"status": "pending"})).json() == []
    assert len((await client.get("/orders")).json()) == 3

    with anyio.fail_after(10):  # the read model hears the stock service a moment later
        while True:
            after = (await client.get("/stock")).json()
            if after != before and after == await shop.stock.levels():
                break
            await anyio.sleep(0.02)
    assert after == {**before, "book": before["book"] - 2, "lamp": before["lamp"] - 1}


async def test_concurrent_requests_race_for_the_last_lamps(served: Any) -> None:
    """Six customers' requests for a lamp at once: exactly the two in stock are sold, the
    other orders are rejected, and no lamp is left held or lost."""
    shop, client, _ = served
    ids: list[str] = []

    async def buy(customer: str) -> None:
        response = await client.post("/orders", json=order(customer, ("lamp", 1)))
        assert response.status_code == 202, response.text
        ids.append(response.json()["order_id"])

    async with anyio.create_task_group() as tg:
        for customer in ("alice", "bob", "carol", "alice", "bob", "carol"):
            tg.start_soon(buy, customer)
    ends = [await settle(client, f"/orders/{order_id}") for order_id in ids]
    assert sorted(end["status"] for end in ends) == ["completed"] * 2 + ["rejected"] * 4
    assert (await shop.stock.levels())["lamp"] == 0
    assert (await shop.orders.sold())["lamp"] == 2


async def test_a_retried_order_id_is_one_order(served: Any) -> None:
    """The client's order id makes a retried POST the same order, charged once."""
    shop, client, _ = served
    body = order("carol", ("poster", 2), order_id="o-retry")
    for _ in range(3):
        response = await client.post("/orders", json=body)
        assert response.status_code == 202
        assert response.json()["order_id"] == "o-retry"
    assert (await settle(client, "/orders/o-retry"))["status"] == "completed"
    assert len((await client.get("/orders")).json()) == 1
    assert sum((await shop.payments.captured()).values()) == 10


async def test_a_different_order_under_a_taken_id_is_409(served: Any) -> None:
    """Reusing an order id for another basket is refused, and says how to do it right."""
    _, client, _ = served
    first = await client.post("/orders", json=order("carol", ("poster", 1), order_id="o-mine"))
    assert first.status_code == 202
    other = await client.post("/orders", json=order("carol", ("mug", 1), order_id="o-mine"))
    assert other.status_code == 409, other.text
    assert other.json() == {
        "detail": "order id 'o-mine' is taken by a different order; place the same order to "
        "retry it, or leave the id out to get a new one"
    }
    settled = await settle(client, "/orders/o-mine")
    assert (settled["status"], settled["items"]) == ("completed", {"poster": 1})


def before_the_charge(_: str, envelope: Envelope | None) -> bool:
    """The message that leads to the charge, in either style."""
    return envelope is not None and envelope.type in ("StockReserved", "ChargePayment")


async def test_an_order_cancelled_before_its_charge_is_rejected_and_undone(served: Any) -> None:
    """POST /orders/{id}/cancel answers 202; the cancellation reaches the payment service
    before the charge (held back a moment here, so that it surely does), the saga
    compensates: the stock comes back, nothing is charged, and the order says why."""
    shop: Shop = served[0]
    client: httpx.AsyncClient = served[1]
    shop.broker.faults.delay(before_the_charge, seconds=2.0, times=10)
    placed = await client.post("/orders", json=order("alice", ("lamp", 1), order_id="o-oops"))
    assert placed.status_code == 202
    for _ in range(2):  # asking twice is one cancellation
        response = await client.post("/orders/o-oops/cancel")
        assert response.status_code == 202, response.text
        assert response.json() == {
            "order_id": "o-oops",
            "status": "cancel requested",
            "href": "/orders/o-oops",
        }
        assert response.headers["Location"] == "/orders/o-oops"
    settled = await settle(client, "/orders/o-oops")
    assert (settled["status"], settled["reason"]) == ("rejected", "cancelled by the customer")
    assert (await client.get("/stock")).json()["lamp"] == 2
    assert sum((await shop.payments.captured()).values()) == 0
    late = await client.post("/orders/o-oops/cancel")
    assert late.status_code == 409
    assert late.json() == {
        "detail": "order 'o-oops' is rejected already: there is nothing to cancel"
    }


async def test_a_paid_order_cannot_be_cancelled(served: Any) -> None:
    """Once its saga completed, an order stays as it is: the cancellation is refused (409);
    an order nobody placed is 404."""
    _, client, _ = served
    await client.post("/orders", json=order("bob", ("book", 1), order_id="o-paid"))
    assert (await settle(client, "/orders/o-paid"))["status"] == "completed"
    late = await client.post("/orders/o-paid/cancel")
    assert late.status_code == 409
    assert late.json() == {
        "detail": "order 'o-paid' is completed already: there is nothing to cancel"
    }
    unknown = await client.post("/orders/o-nobody/cancel")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "no order 'o-nobody' was placed"}


async def test_an_unknown_order_is_404(served: Any) -> None:
    _, client, _ = served
    response = await client.get("/orders/o-nobody")
    assert response.status_code == 404
    assert response.json() == {"detail": "no order 'o-nobody'"}


def errors(response: httpx.Response) -> list[tuple[tuple[str | int, ...], str]]:
    """Where and what, for each error of a 422."""
    assert response.status_code == 422, response.text
    return [(tuple(e["loc"]), e["msg"]) for e in response.json()["detail"]]


async def test_invalid_requests_get_a_422_that_says_what_was_wrong(served: Any) -> None:
    """Each problem is reported with where it is; nothing is placed."""
    shop: Shop = served[0]
    client: httpx.AsyncClient = served[1]

    unknown = errors(await client.post("/orders", json=order("mallory", ("piano", 1), ("mug", 1))))
    assert unknown[0] == (("body", "customer_id"), "unknown customer")
    assert unknown[1][0] == ("body", "lines", 0, "sku")
    assert unknown[1][1].startswith("unknown article (the catalog has: book, lamp, mug, poster)")
    assert len(unknown) == 2

    (zero,) = errors(await client.post("/orders", json=order("alice", ("book", 0))))
    assert zero == (("body", "lines", 0, "qty"), "Input should be greater than 0")

    (empty,) = errors(await client.post("/orders", json=order("alice")))
    assert empty[0] == ("body", "lines")
    assert "at least 1 item" in empty[1]

    (missing,) = errors(await client.post("/orders", json={"lines": [{"sku": "book", "qty": 1}]}))
    assert missing == (("body", "customer_id"), "Field required")

    (bad_id,) = errors(
        await client.post("/orders", json=order("alice", ("book", 1), order_id="no spaces"))
    )
    assert bad_id[0] == ("body", "order_id")

    (status,) = errors(await client.get("/orders", params={"status": "shipped"}))
    assert status == (("query", "status"), "Input should be 'pending', 'completed' or 'rejected'")

    assert (await client.get("/orders")).json() == []
    assert (await shop.orders.statuses()).total() == 0


async def test_the_openapi_schema_lists_the_routes(served: Any) -> None:
    """The schema is served, with typed bodies and the 202, 404 and 422 answers."""
    _, client, _ = served
    schema = (await client.get("/openapi.json")).json()
    assert {(path, method) for path, ops in schema["paths"].items() for method in ops} == {
        ("/orders", "post"),
        ("/orders", "get"),
        ("/orders/{order_id}", "get"),
        ("/orders/{order_id}/cancel", "post"),
        ("/stock", "get"),
    }
    post = schema["paths"]["/orders"]["post"]
    assert set(post["responses"]) == {"202", "409", "422"}
    cancel = schema["paths"]["/orders/{order_id}/cancel"]["post"]
    assert set(cancel["responses"]) == {"202", "404", "409", "422"}
    assert "Location" in post["responses"]["202"]["headers"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PlaceOrderRequest"
    }
    assert set(schema["paths"]["/orders/{order_id}"]["get"]["responses"]) == {"200", "404", "422"}
    models = schema["components"]["schemas"]
    assert {"PlaceOrderRequest", "LineRequest", "OrderAccepted", "OrderResponse"} <= set(models)
    assert models["OrderResponse"]["properties"]["status"]["enum"] == [
        "pending",
        "completed",
        "rejected",
    ]
    assert [tag["name"] for tag in schema["tags"]] == ["orders", "stock"]
    assert (await client.get("/docs")).status_code == 200


async def test_the_docs_snippet_prints_what_the_page_shows(
    served: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/examples/ecommerce.md: the requests and answers pasted on the page are the ones
    the snippet makes and gets, in both styles (a rejected order says why in both: the
    orchestrated order service's compensation reads it from ``ctx.failure``)."""
    _, _, base_url = served
    snippet = load("shop_http", monkeypatch)
    await snippet.main(base_url)
    assert capsys.readouterr().out == pasted_output("shop_http")


@pytest.mark.slow
async def test_the_command_serves_the_shop(tmp_path: Path) -> None:
    """``python -m examples.ecommerce.http`` opens the shop, serves it on loopback, and
    stops cleanly on an interrupt."""
    port = free_port()
    command = [sys.executable, "-m", "examples.ecommerce.http", "--port", str(port)]
    process = await anyio.open_process(
        [*command, "--style", "orchestrated", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            with anyio.fail_after(20):
                while True:
                    try:
                        stock = await client.get("/stock")
                        break
                    except httpx.ConnectError:
                        await anyio.sleep(0.05)
            assert stock.json() == {sku: units for sku, (_, units) in CATALOG.items()}
            placed = await client.post("/orders", json=order("alice", ("mug", 1)))
            assert placed.status_code == 202
            assert (await settle(client, placed.headers["location"]))["status"] == "completed"
    finally:
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            await process.wait()
        assert process.stdout is not None
        output = b"".join([chunk async for chunk in process.stdout]).decode()
    assert process.returncode == 0, output
    assert "Uvicorn running on http://127.0.0.1:" in output
    assert (tmp_path / "orders.db").exists()
