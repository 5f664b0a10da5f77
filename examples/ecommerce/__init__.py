"""The shop: a ``place-order`` saga over an order, a stock and a payment service.

Run it with ``make demo`` (or ``python -m examples.ecommerce --help``).

In a real shop each service is a separate process behind a network; here each is a small
in-process class with its own SQLite file, so that the demo needs nothing but Python. The
services know nothing about sagas, but they do what a saga needs from every participant:
**each operation is idempotent by a key the caller passes.** The saga passes its step's
``ctx.idempotency_key``, which stays the same when a step is retried or re-run after a crash,
and which the step's compensation receives too. So a repeated call has no second effect, and
a compensation finds exactly the effect it has to undo, or learns that there is none.
"""
