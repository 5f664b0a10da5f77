"""The shop: the place-order flow over an order, a stock and a payment service, in both styles.

Run it with ``make demo`` (or ``python -m examples.ecommerce --help``).

Each service owns its data (its own SQLite file) and talks to the others only through
messages, as a :class:`~pysaga.Participant` on the broker. The same flow runs choreographed
(the services react to each other's events; an observer records each saga in the saga log)
or orchestrated (a saga of remote steps), see ``flows.py``. Commands go through the saga;
queries read a read model kept by a projection (``app.py``, ``read_model.py``). Every
operation is keyed by the order id, so a message handled again has no second effect.
"""
