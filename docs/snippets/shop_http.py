"""Call the shop's HTTP front: place orders, follow them until their sagas end, query.

Start the front first (``python -m examples.ecommerce.http``), then run this file.
"""

from __future__ import annotations

import json

import anyio
import httpx


def show(response: httpx.Response) -> None:
    """Print a response: its status, its Location if any, and its body."""
    location = response.headers.get("location")
    where = f" Location: {location}" if location else ""
    print(f"{response.status_code}{where} {json.dumps(response.json())}")


async def follow(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """GET *url* until the order is no longer pending (its saga ended)."""
    while True:
        response = await client.get(url)
        if response.json()["status"] != "pending":
            return response
        await anyio.sleep(0.05)


# --8<-- [start:main]
async def main(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        # A command: the saga starts, the answer comes at once.
        placed = await client.post(
            "/orders",
            json={
                "order_id": "o-1001",
                "customer_id": "alice",
                "lines": [{"sku": "book", "qty": 2}, {"sku": "lamp", "qty": 1}],
            },
        )
        show(placed)
        show(await follow(client, placed.headers["location"]))

        # Dave's balance does not cover this one: accepted, then rejected by the saga.
        declined = await client.post(
            "/orders",
            json={"order_id": "o-1002", "customer_id": "dave", "lines": [{"sku": "mug", "qty": 2}]},
        )
        show(await follow(client, declined.headers["location"]))

        # Queries, from the read model.
        show(await client.get("/orders", params={"status": "completed"}))
        show(await client.get("/stock"))

        # An order the shop cannot take is refused at the door, saying why.
        show(
            await client.post(
                "/orders", json={"customer_id": "alice", "lines": [{"sku": "piano", "qty": 1}]}
            )
        )
        # --8<-- [end:main]


if __name__ == "__main__":
    anyio.run(main, "http://127.0.0.1:8000")
