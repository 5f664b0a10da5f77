"""The shop's HTTP front, like the original sample's API: commands and queries over HTTP.

* ``POST /orders`` is a **command**: it starts the place-order saga and answers ``202
  Accepted`` at once, with the order's id and a ``Location`` to follow. The saga runs on its
  own from there; the order is pending until it completes or is rejected.
* ``POST /orders/{order_id}/cancel`` is a command too: it asks for an order that is not paid
  yet to be called off (``202``); its saga then compensates. A paid order stays paid.
* ``GET /orders/{order_id}``, ``GET /orders?status=...`` and ``GET /stock`` are **queries**:
  they read the read model, never the services' databases.

A request the shop cannot take (an unknown article or customer, a quantity below one, an
empty basket, an unknown status to filter by) gets a ``422`` whose body says what was wrong
and where, in FastAPI's usual shape. An order that cannot be *served* (stock short, payment
declined) is not an invalid request: it is accepted, and its saga rejects it.

Run it from the repository's root (it serves on the loopback interface only)::

    python -m examples.ecommerce.http [--port 8000] [--style choreographed|orchestrated]

then open ``http://127.0.0.1:8000/docs`` for the OpenAPI schema, rendered.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import anyio
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from .app import OrderIdTaken, OrderSettled, ShopApp, Style, UnknownOrder
from .messages import OrderLine
from .read_model import OrderView
from .shop import CATALOG, CUSTOMERS, DATA_FILES, open_shop

__all__ = (
    "CancelAccepted",
    "LineRequest",
    "OrderAccepted",
    "OrderResponse",
    "OrderStatus",
    "PlaceOrderRequest",
    "create_app",
    "main",
)

OrderStatus = Literal["pending", "completed", "rejected"]
"""Where an order is: ``pending`` while its saga runs, then ``completed`` or ``rejected``."""

ORDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

SETTLE_WAIT = 1.0
"""How long ``POST /orders`` waits, at most, for the read model to show the new order, so
that a client following the ``Location`` at once finds it (the order is accepted either way)."""


# -- the request and response bodies ---------------------------------------------------------


class LineRequest(BaseModel):
    """So many units of one article. The price is the shop's, not the client's."""

    model_config = ConfigDict(extra="forbid")

    sku: str = Field(description="The article, as the catalog names it.", examples=["book"])
    qty: int = Field(gt=0, le=1000, description="Units wanted, at least one.", examples=[2])


class PlaceOrderRequest(BaseModel):
    """An order to place: who buys, and what."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "alice",
                    "lines": [{"sku": "book", "qty": 2}, {"sku": "mug", "qty": 1}],
                }
            ]
        },
    )

    customer_id: str = Field(description="The customer who pays.", examples=["alice"])
    lines: list[LineRequest] = Field(
        min_length=1, max_length=50, description="What to buy, one line per article."
    )
    order_id: str | None = Field(
        default=None,
        pattern=ORDER_ID_PATTERN,
        description="An id for the order, chosen by the client so that a retried request "
        "is the same order, never a second one (default: the shop makes one).",
        examples=["o-1001"],
    )


class OrderAccepted(BaseModel):
    """The order is taken and its saga runs: follow ``href`` to see how it ends."""

    order_id: str = Field(examples=["o-1001"])
    status: Literal["accepted"] = "accepted"
    href: str = Field(description="Where to query the order.", examples=["/orders/o-1001"])


class CancelAccepted(BaseModel):
    """The cancellation is asked for: follow ``href`` to see how the order ends."""

    order_id: str = Field(examples=["o-1001"])
    status: Literal["cancel requested"] = "cancel requested"
    href: str = Field(description="Where to query the order.", examples=["/orders/o-1001"])


class OrderResponse(BaseModel):
    """An order as the read model knows it."""

    order_id: str = Field(examples=["o-1001"])
    customer_id: str = Field(examples=["alice"])
    items: dict[str, int] = Field(description="Units, by article.", examples=[{"book": 2}])
    amount: Decimal = Field(description="What the customer pays.", examples=["25.00"])
    status: OrderStatus
    reason: str = Field(description="Why the order was rejected (empty otherwise).", examples=[""])

    @classmethod
    def of(cls, view: OrderView) -> OrderResponse:
        return cls(
            order_id=view.order_id,
            customer_id=view.customer_id,
            items=view.items,
            amount=view.amount,
            status=view.status,
            reason=view.reason,
        )


class Problem(BaseModel):
    """What went wrong."""

    detail: str = Field(examples=["no order 'o-404'"])


# -- the application -------------------------------------------------------------------------


def create_app(
    app: ShopApp | None = None,
    *,
    data_dir: Path | None = None,
    style: Style = "choreographed",
    prices: Mapping[str, Decimal] | None = None,
    customers: Collection[str] | None = None,
) -> FastAPI:
    """The HTTP front of *app*, or of a shop it opens itself.

    Args:
        app: A running shop's application layer (its caller keeps the shop open while the
            front serves). ``None``: the front opens a shop in *data_dir* when the server
            starts, and closes it when the server stops.
        data_dir: Where the shop it opens keeps its files (only without *app*).
        style: How the saga runs in the shop it opens (only without *app*).
        prices: The catalog, by article: what can be ordered, at what unit price (default:
            the shop's catalog).
        customers: Who can order (default: the shop's customers).

    Raises:
        ValueError: neither a running *app* nor a *data_dir* to open a shop in.
    """
    if app is None and data_dir is None:
        raise ValueError("give a running ShopApp, or a data_dir to open the shop in")
    price_of = dict(prices) if prices is not None else {s: p for s, (p, _) in CATALOG.items()}
    known_customers = frozenset(customers if customers is not None else CUSTOMERS)

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        if app is not None:
            api.state.shop = app
            yield
            return
        assert data_dir is not None
        async with open_shop(data_dir, style=style) as shop:
            api.state.shop = shop.app
            yield

    api = FastAPI(
        title="pysaga shop",
        summary="The place-order saga of the pysaga shop example, over HTTP.",
        description="Commands start sagas and answer `202 Accepted` at once; queries read "
        "the read model, which shows a change a moment after the services made it.",
        version="1.0",
        lifespan=lifespan,
        openapi_tags=[
            {
                "name": "orders",
                "description": "Place and cancel orders (commands) and query them.",
            },
            {"name": "stock", "description": "Stock levels, from the read model."},
        ],
    )
    if app is not None:
        api.state.shop = app

    def shop_of(request: Request) -> ShopApp:
        shop: ShopApp = request.app.state.shop
        return shop

    @api.post(
        "/orders",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=OrderAccepted,
        tags=["orders"],
        summary="Place an order",
        responses={
            202: {
                "description": "The order is taken; its saga runs.",
                "headers": {
                    "Location": {
                        "description": "The order's URL.",
                        "schema": {"type": "string"},
                    }
                },
            },
            409: {"model": Problem, "description": "A different order has this order_id."},
        },
    )
    async def place_order(
        body: PlaceOrderRequest, request: Request, response: Response
    ) -> OrderAccepted:
        """Start the place-order saga and answer at once. The order is ``pending`` until
        its saga completes it or rejects it (stock short, payment declined): poll
        ``GET /orders/{order_id}`` to see which. Placing the same ``order_id`` again is the
        same order."""
        problems: list[dict[str, object]] = []
        if body.customer_id not in known_customers:
            problems.append(_problem(("body", "customer_id"), body.customer_id, "unknown customer"))
        for index, line in enumerate(body.lines):
            if line.sku not in price_of:
                known = ", ".join(sorted(price_of))
                problems.append(
                    _problem(
                        ("body", "lines", index, "sku"),
                        line.sku,
                        f"unknown article (the catalog has: {known})",
                    )
                )
        if problems:
            raise RequestValidationError(problems)
        shop = shop_of(request)
        lines = [
            OrderLine(sku=line.sku, qty=line.qty, unit_price=price_of[line.sku])
            for line in body.lines
        ]
        try:
            order_id = await shop.place_order(body.customer_id, lines, order_id=body.order_id)
        except OrderIdTaken as taken:
            raise HTTPException(status.HTTP_409_CONFLICT, str(taken)) from None
        # Read your own write: the read model shows the order a moment after it is placed.
        with anyio.move_on_after(SETTLE_WAIT):
            while True:
                if shop.get_order(order_id) is not None:
                    break
                await anyio.sleep(0.01)
        href = f"/orders/{order_id}"
        response.headers["Location"] = href
        return OrderAccepted(order_id=order_id, href=href)

    @api.post(
        "/orders/{order_id}/cancel",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=CancelAccepted,
        tags=["orders"],
        summary="Cancel an order",
        responses={
            202: {"description": "The cancellation is on its way to the payment service."},
            404: {"model": Problem, "description": "No order has this id."},
            409: {"model": Problem, "description": "The order has completed or was rejected."},
        },
    )
    async def cancel_order(
        order_id: Annotated[str, PathParam(description="The order's id.", examples=["o-1001"])],
        request: Request,
        response: Response,
    ) -> CancelAccepted:
        """Ask for a pending order to be cancelled, and answer at once. If the cancellation
        reaches the payment service before the charge, the order's saga compensates and the
        order ends ``rejected``, "cancelled by the customer"; if the charge came first, the
        order completes. Poll ``GET /orders/{order_id}`` to see which. Asking again is the same
        cancellation."""
        try:
            await shop_of(request).cancel_order(order_id)
        except UnknownOrder as unknown:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(unknown)) from None
        except OrderSettled as settled:
            raise HTTPException(status.HTTP_409_CONFLICT, str(settled)) from None
        href = f"/orders/{order_id}"
        response.headers["Location"] = href
        return CancelAccepted(order_id=order_id, href=href)

    @api.get(
        "/orders/{order_id}",
        response_model=OrderResponse,
        tags=["orders"],
        summary="Get an order",
        responses={404: {"model": Problem, "description": "The read model knows no such order."}},
    )
    async def get_order(
        order_id: Annotated[str, PathParam(description="The order's id.", examples=["o-1001"])],
        request: Request,
    ) -> OrderResponse:
        """The order as the read model knows it: ``pending``, ``completed`` or
        ``rejected`` (with the reason)."""
        view = shop_of(request).get_order(order_id)
        if view is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id!r}")
        return OrderResponse.of(view)

    @api.get("/orders", response_model=list[OrderResponse], tags=["orders"], summary="List orders")
    async def list_orders(
        request: Request,
        status: Annotated[
            OrderStatus | None,
            Query(description="Only the orders in this status (default: every order)."),
        ] = None,
    ) -> list[OrderResponse]:
        """Every order, or those in one status, by id."""
        return [OrderResponse.of(view) for view in shop_of(request).list_orders(status)]

    @api.get(
        "/stock",
        response_model=dict[str, int],
        tags=["stock"],
        summary="Stock levels",
        response_description="Units on the shelf, by article.",
    )
    async def stock_levels(request: Request) -> dict[str, int]:
        """Units on the shelf, by article (held units are not on the shelf)."""
        return shop_of(request).stock_levels()

    return api


def _problem(loc: tuple[str | int, ...], value: object, message: str) -> dict[str, object]:
    """One error in the shape FastAPI gives its own validation errors."""
    return {"type": "value_error", "loc": loc, "msg": message, "input": value}


# -- the command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the shop on the loopback interface until interrupted; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.ecommerce.http",
        description="Serve the shop's orders and stock over HTTP, on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=8000, help="the port (default: 8000)")
    parser.add_argument(
        "--style",
        choices=("choreographed", "orchestrated"),
        default="choreographed",
        help="how the place-order saga runs (default: choreographed)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the shop keeps its files (emptied of them first: the shop opens afresh; "
        "default: a temporary directory, removed at the end)",
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pysaga-shop-")))
        else:
            data_dir = args.data_dir
            for name in DATA_FILES:
                for suffix in ("", "-wal", "-shm"):
                    (data_dir / f"{name}{suffix}").unlink(missing_ok=True)
        api = create_app(data_dir=data_dir, style=args.style)
        config = uvicorn.Config(api, host="127.0.0.1", port=args.port, log_level="info")
        # The server stops on Ctrl-C (or SIGTERM), and then raises it again: a normal end.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
