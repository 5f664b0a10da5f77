"""The orchestrator's side of remote steps: send a step's command, wait for its reply.

Each orchestrator opens one private reply channel on its broker and keeps a table of the
commands it waits on, keyed by command id; a reply names its command in ``causation_id``.

A command's id is derived from the step's idempotency key (:func:`~pysaga.messaging.command_id`),
so every send of it — a retry after a timeout, a re-run after this orchestrator restarted, the
same step driven by another orchestrator — carries the same id. A participant that already
handled it answers from its inbox without handling it again. That is also why a reply that
arrives when nobody waits for it (its orchestrator restarted) can simply be dropped: asking
again costs one message and no second effect.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import anyio

from .errors import BusinessError, DecodeError, RemoteStepError, StepError
from .messaging import (
    HEADER_FAILURE,
    HEADER_IDEMPOTENCY_KEY,
    HEADER_STEP,
    Envelope,
    Failed,
    Refused,
    command_id,
    message_type,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .definition import RemoteCall, StepContext
    from .interceptors import Invoke
    from .messaging import Broker, Subscription

__all__ = ("Requester",)

logger = logging.getLogger("pysaga.orchestrator")

_REFUSED = message_type(Refused)
_FAILED = message_type(Failed)


class _Waiter:
    __slots__ = ("event", "reply", "users")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.reply: Envelope | None = None
        self.users = 0


class Requester:
    """Sends commands and hands each reply to the step waiting for it."""

    __slots__ = ("_channel", "_pending", "address", "broker")

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.address: str | None = None
        self._channel: Subscription | None = None
        self._pending: dict[str, _Waiter] = {}

    async def start(self) -> None:
        """Open this orchestrator's reply channel."""
        self._channel = await self.broker.open_reply_channel(self._on_reply)
        self.address = self._channel.destination

    async def stop(self) -> None:
        """Close the reply channel."""
        channel, self._channel, self.address = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def _on_reply(self, envelope: Envelope) -> None:
        waiter = self._pending.get(envelope.causation_id or "")
        if waiter is None:
            logger.debug(
                "reply %s to command %s arrived with nobody waiting (answered already, or "
                "asked before a restart); dropped",
                envelope.id,
                envelope.causation_id,
            )
            return
        if waiter.reply is None:
            waiter.reply = envelope
            waiter.event.set()

    async def request(self, destination: str, command: Envelope) -> Envelope:
        """Publish *command* (whose ``reply_to`` is :attr:`address`) to *destination* and wait
        for the reply to it."""
        waiter = self._pending.get(command.id)
        if waiter is None:
            waiter = self._pending[command.id] = _Waiter()
        waiter.users += 1
        try:
            await self.broker.publish(destination, command)
            await waiter.event.wait()
            assert waiter.reply is not None
            return waiter.reply
        finally:
            waiter.users -= 1
            if waiter.users == 0:
                self._pending.pop(command.id, None)

    def invoker(self, call: RemoteCall, *, compensating: bool) -> Invoke:
        """A remote step's (or its compensation's) own call, as ``invoke(data, ctx)``."""

        async def invoke(data: BaseModel, ctx: StepContext) -> Any:
            return await self.call(call, data, ctx, compensating=compensating)

        return invoke

    async def call(
        self, call: RemoteCall, data: BaseModel, ctx: StepContext, *, compensating: bool
    ) -> Any:
        """Run one attempt of a remote step (or of its compensation).

        Returns:
            The saga's new data, or ``None`` to keep it.

        Raises:
            BusinessError: the participant refused the command.
            RemoteStepError: the participant failed for a technical reason (retryable).
            StepError: the reply could not be read (not retryable: it would read the same).
        """
        if compensating:
            assert call.build_compensation is not None
            message = call.build_compensation(data)
        else:
            message = call.build(data)
        if self.address is None:
            raise RuntimeError("the reply channel is not open; enter the Orchestrator first")
        headers = {HEADER_IDEMPOTENCY_KEY: ctx.idempotency_key, HEADER_STEP: ctx.step}
        if compensating and ctx.failure is not None:  # why the saga turned back
            headers[HEADER_FAILURE] = json.dumps(ctx.failure.to_json(), default=str)
        command = Envelope.of(
            message,
            id=command_id(ctx.idempotency_key, compensation=compensating),
            correlation_id=ctx.saga_id,
            reply_to=self.address,
            headers=headers,
        )
        reply = await self.request(call.service, command)
        try:
            if reply.type == _REFUSED:
                refused = reply.parse(Refused)
                raise BusinessError(refused.reason, details=refused.details)
            if reply.type == _FAILED:
                failed = reply.parse(Failed)
                raise RemoteStepError(
                    failed.message, error_type=failed.error_type, service=call.service
                )
            if compensating or call.reply is None:
                return None
            answer = reply.parse(call.reply)
        except DecodeError as exc:
            raise StepError(
                f"{call.service} answered {ctx.step!r} with a reply that cannot be read: {exc}",
                retryable=False,
            ) from exc
        return call.on_reply(data, answer)
