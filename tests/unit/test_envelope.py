"""The envelope: what it carries, how it reads and refuses bytes, and its ids."""

from __future__ import annotations

import os
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from pysaga import DecodeError, Envelope
from pysaga.messaging import command_id, message_type, new_message_id, schema_version


class ReserveStock(BaseModel):
    __message_type__: ClassVar[str] = "stock.reserve"
    __schema_version__: ClassVar[int] = 2

    sku: str
    qty: int


class Plain(BaseModel):
    text: str


def test_type_names_and_versions() -> None:
    assert message_type(ReserveStock) == "stock.reserve"
    assert schema_version(ReserveStock) == 2
    assert message_type(Plain) == "Plain"
    assert schema_version(Plain) == 1


@given(
    sku=st.text(max_size=30),
    qty=st.integers(),
    headers=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
)
def test_round_trip(sku: str, qty: int, headers: dict[str, str]) -> None:
    sent = Envelope.of(
        ReserveStock(sku=sku, qty=qty),
        correlation_id="saga-1",
        causation_id="m-0",
        reply_to="r",
        headers=headers,
    )
    received = Envelope.decode(sent.encode())
    assert received == sent
    assert received.parse(ReserveStock) == ReserveStock(sku=sku, qty=qty)
    assert received.model_dump() == Envelope.model_validate(sent.model_dump()).model_dump()


def test_a_reply_names_its_command() -> None:
    command = Envelope.of(Plain(text="q"), correlation_id="saga-1")
    reply = command.reply(Plain(text="a"))
    assert reply.correlation_id == "saga-1"
    assert reply.causation_id == command.id


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not a pysaga message envelope"),
        (b"[1, 2]", "not a pysaga message envelope"),
        (b'{"pysaga": 1, "type": "x", "payload": {}}', "id: Field required"),
        (b'{"pysaga": 9, "id": "m", "type": "x", "payload": {}}', "pysaga: Input should be 1"),
    ],
)
def test_what_is_not_an_envelope_is_refused_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        Envelope.decode(body)


def test_a_payload_is_checked_against_its_model() -> None:
    envelope = Envelope.of(ReserveStock(sku="book", qty=1))
    with pytest.raises(DecodeError, match="is of type 'stock.reserve', not 'Plain'"):
        envelope.parse(Plain)
    bad = Envelope.from_parts(id="m", type="stock.reserve", schema_version=2, payload={"sku": 1})
    with pytest.raises(DecodeError, match="does not fit ReserveStock .*qty: Field required"):
        bad.parse(ReserveStock)


def test_a_newer_schema_version_is_refused() -> None:
    newer = Envelope.from_parts(
        id="m", type="stock.reserve", schema_version=3, payload={"sku": "b", "qty": 1}
    )
    with pytest.raises(DecodeError, match="schema version 3, newer than the 2"):
        newer.parse(ReserveStock)
    older = Envelope.from_parts(
        id="m", type="stock.reserve", schema_version=1, payload={"sku": "b", "qty": 1}
    )
    assert older.parse(ReserveStock).qty == 1


def test_message_ids_are_unique_and_a_forked_child_draws_new_ones() -> None:
    ids = {new_message_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, new_message_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    os.close(write)
    assert child.split("-")[0] != new_message_id().split("-")[0]


def test_a_command_keeps_its_id() -> None:
    assert command_id("saga-1/reserve") == command_id("saga-1/reserve")
    assert command_id("saga-1/reserve", compensation=True) != command_id("saga-1/reserve")
