"""The saga log contract, written once and run against every saga log (memory, SQLite,
PostgreSQL)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from pysaga import (
    ConcurrencyError,
    DefinitionRecord,
    EntryKind,
    Failure,
    LeaseLost,
    LogEntry,
    SagaLog,
    SagaNotFoundError,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    SagaVersion,
    StepState,
    StepStatus,
)

pytestmark = pytest.mark.anyio


def record(
    saga_id: str,
    *,
    name: str = "s",
    owner: str = "me",
    lease: float = 100.0,
    created_at: float = 1.0,
    status: SagaStatus = SagaStatus.RUNNING,
    incarnation: str | None = None,
) -> SagaRecord:
    return SagaRecord(
        saga_id=saga_id,
        name=name,
        version=1,
        status=status,
        data='{"n":1}',
        owner=owner,
        lease_expires_at=lease,
        deadline_at=None,
        created_at=created_at,
        updated_at=created_at,
        incarnation=incarnation,
    )


def started(at: float = 1.0) -> list[LogEntry]:
    return [LogEntry(EntryKind.SAGA_STARTED, at=at, owner="me")]


class TestCreateAndRead:
    async def test_round_trip(self, saga_log: SagaLog) -> None:
        """What is created reads back the same."""
        rec = record("a", incarnation="run-1")
        rec.deadline_at = 50.5
        rec.steps = {"x": StepState(StepStatus.SUCCEEDED, 2, 1)}
        await saga_log.create(rec, started())
        got = await saga_log.get("a")
        assert got == rec
        assert await saga_log.history("a") == started()

    async def test_missing(self, saga_log: SagaLog) -> None:
        """Unknown ids read as None / empty history."""
        assert await saga_log.get("nope") is None
        assert await saga_log.history("nope") == []

    async def test_duplicate_id(self, saga_log: SagaLog) -> None:
        """Creating an existing id is refused and changes nothing."""
        await saga_log.create(record("a"), started())
        other = record("a", name="other")
        with pytest.raises(ConcurrencyError, match="exists"):
            await saga_log.create(other, started(2.0))
        got = await saga_log.get("a")
        assert got is not None
        assert got.name == "s"
        assert len(await saga_log.history("a")) == 1

    async def test_records_are_copies(self, saga_log: SagaLog) -> None:
        """Changing a returned record does not change the log."""
        await saga_log.create(record("a"), started())
        got = await saga_log.get("a")
        assert got is not None
        got.steps["x"] = StepState(StepStatus.STARTED)
        got.status = SagaStatus.FAILED
        again = await saga_log.get("a")
        assert again is not None
        assert again.steps == {}
        assert again.status is SagaStatus.RUNNING


class TestUpdate:
    async def test_update_applies_atomically(self, saga_log: SagaLog) -> None:
        """An update appends entries, merges steps, sets data and bumps the revision."""
        await saga_log.create(record("a"), started())
        failure = Failure("x", "ValueError", "bad", business=True, details={"k": [1, 2]})
        entries = [
            LogEntry(EntryKind.STEP_STARTED, at=2.0, step="x", attempt=1, owner="me"),
            LogEntry(
                EntryKind.STEP_FAILED, at=3.0, step="x", attempt=1, failure=failure, owner="me"
            ),
        ]
        rev = await saga_log.update(
            "a",
            SagaUpdate(
                entries,
                SagaStatus.RUNNING,
                {"x": StepState(StepStatus.FAILED, 1, 1)},
                data='{"n":2}',
            ),
            revision=0,
            owner="me",
        )
        assert rev == 1
        rev = await saga_log.update(
            "a",
            SagaUpdate(
                [],
                SagaStatus.COMPENSATING,
                {"y": StepState(StepStatus.STARTED, 1, 0)},
                failure=failure,
            ),
            revision=1,
            owner="me",
        )
        assert rev == 2
        got = await saga_log.get("a")
        assert got is not None
        assert got.revision == 2
        assert got.status is SagaStatus.COMPENSATING
        assert got.data == '{"n":2}'  # kept when the update carries no data
        assert got.steps == {
            "x": StepState(StepStatus.FAILED, 1, 1),
            "y": StepState(StepStatus.STARTED, 1, 0),
        }
        assert got.failure == failure
        assert await saga_log.history("a") == [*started(), *entries]

    async def test_update_without_status_keeps_it(self, saga_log: SagaLog) -> None:
        """An update that names no status leaves the saga's status as it was."""
        await saga_log.create(record("a"), started())
        await saga_log.update("a", SagaUpdate([], SagaStatus.COMPENSATING), revision=0, owner="me")
        await saga_log.update(
            "a",
            SagaUpdate([], steps={"x": StepState(StepStatus.COMPENSATED, 1, 0)}),
            revision=1,
            owner="me",
        )
        got = await saga_log.get("a")
        assert got is not None
        assert got.status is SagaStatus.COMPENSATING
        assert got.steps["x"].status is StepStatus.COMPENSATED

    async def test_stale_revision(self, saga_log: SagaLog) -> None:
        """A write at an old revision is refused and changes nothing."""
        await saga_log.create(record("a"), started())
        update = SagaUpdate([LogEntry(EntryKind.SAGA_COMPLETED, at=2.0)], SagaStatus.COMPLETED)
        await saga_log.update("a", update, revision=0, owner="me")
        with pytest.raises(ConcurrencyError):
            await saga_log.update("a", update, revision=0, owner="me")
        assert len(await saga_log.history("a")) == 2

    async def test_wrong_owner(self, saga_log: SagaLog) -> None:
        """A write by a non-holder is refused with LeaseLost."""
        await saga_log.create(record("a", owner="other"), started())
        update = SagaUpdate([], SagaStatus.COMPLETED)
        with pytest.raises(LeaseLost):
            await saga_log.update("a", update, revision=0, owner="me")

    async def test_unknown_saga(self, saga_log: SagaLog) -> None:
        """Updating a missing saga says so."""
        with pytest.raises(SagaNotFoundError):
            await saga_log.update(
                "zzz", SagaUpdate([], SagaStatus.COMPLETED), revision=0, owner="me"
            )

    async def test_concurrent_writers_one_wins(self, saga_log: SagaLog) -> None:
        """Of many concurrent writes at one revision exactly one lands; other sagas' writes
        in the same moment are unaffected."""
        for name in ("a", "b"):
            await saga_log.create(record(name), started())
        results: list[str] = []

        async def write(saga_id: str, n: int) -> None:
            update = SagaUpdate(
                [LogEntry(EntryKind.SAGA_COMPLETED, at=float(n))], SagaStatus.COMPLETED
            )
            try:
                await saga_log.update(saga_id, update, revision=0, owner="me")
                results.append(f"{saga_id} ok")
            except ConcurrencyError:
                results.append(f"{saga_id} refused")

        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(write, "a", n)
            tg.start_soon(write, "b", 99)
        assert sorted(results) == ["a ok"] + ["a refused"] * 9 + ["b ok"]
        for name in ("a", "b"):
            got = await saga_log.get(name)
            assert got is not None
            assert got.revision == 1
            assert len(await saga_log.history(name)) == 2


class TestLeases:
    async def test_claim_takes_only_expired_known_active(self, saga_log: SagaLog) -> None:
        """Claim takes expired leases of known, unfinished sagas, and records the claim."""
        await saga_log.create(record("expired", lease=5.0), started())
        await saga_log.create(record("alive", lease=500.0), started())
        await saga_log.create(record("done", lease=5.0, status=SagaStatus.COMPLETED), started())
        await saga_log.create(record("stranger", name="zz", lease=5.0), started())
        claimed = await saga_log.claim("new", kinds={("s", 1)}, lease=30.0, now=10.0)
        assert [r.saga_id for r in claimed] == ["expired"]
        got = await saga_log.get("expired")
        assert got is not None
        assert (got.owner, got.lease_expires_at, got.revision) == ("new", 40.0, 1)
        assert claimed[0] == got
        history = await saga_log.history("expired")
        assert history[-1].kind is EntryKind.SAGA_CLAIMED
        assert history[-1].owner == "new"
        for other in ("alive", "done", "stranger"):
            rec = await saga_log.get(other)
            assert rec is not None
            assert rec.owner == "me"
        # the new holder's lease is now live: nobody else can take it
        assert await saga_log.claim("third", kinds={("s", 1)}, lease=30.0, now=20.0) == []

    async def test_claim_limit_and_version(self, saga_log: SagaLog) -> None:
        """Claim respects its limit and the definition version."""
        for n in range(5):
            await saga_log.create(record(f"s{n}", lease=1.0), started())
        assert await saga_log.claim("x", kinds={("s", 2)}, lease=1.0, now=10.0) == []
        first = await saga_log.claim("x", kinds={("s", 1)}, lease=100.0, now=10.0, limit=2)
        rest = await saga_log.claim("y", kinds={("s", 1)}, lease=100.0, now=10.0)
        assert len(first) == 2
        assert len(rest) == 3
        assert {r.saga_id for r in first} | {r.saga_id for r in rest} == {f"s{n}" for n in range(5)}

    async def test_renew_and_release(self, saga_log: SagaLog) -> None:
        """Renew extends the owner's active leases; release lets them go."""
        await saga_log.create(record("a", lease=1.0), started())
        await saga_log.create(record("b", lease=1.0), started())
        await saga_log.create(record("c", lease=1.0, owner="other"), started())
        await saga_log.create(record("d", lease=1.0, status=SagaStatus.COMPLETED), started())
        assert await saga_log.renew("me", until=99.0) == 2
        for saga_id, lease in {"a": 99.0, "b": 99.0, "c": 1.0, "d": 1.0}.items():
            rec = await saga_log.get(saga_id)
            assert rec is not None
            assert rec.lease_expires_at == lease
        await saga_log.release("me", ["a"])
        claimed = await saga_log.claim("new", kinds={("s", 1)}, lease=5.0, now=50.0)
        assert {r.saga_id for r in claimed} == {"a", "c"}
        await saga_log.release("me")
        claimed = await saga_log.claim("new", kinds={("s", 1)}, lease=5.0, now=50.0)
        assert {r.saga_id for r in claimed} == {"b"}

    async def test_a_released_saga_is_not_renewed(self, saga_log: SagaLog) -> None:
        """Once its owner released a saga (after an error, say), the owner's lease upkeep
        does not take it back: it stays free until someone claims it, its owner included."""
        await saga_log.create(record("a", lease=1.0), started())
        await saga_log.create(record("b", lease=1.0), started())
        await saga_log.release("me", ["a"])
        assert await saga_log.renew("me", until=99.0) == 1
        got = await saga_log.get("a")
        assert got is not None
        assert got.lease_expires_at == 0
        claimed = await saga_log.claim("me", kinds={("s", 1)}, lease=5.0, now=50.0)
        assert [r.saga_id for r in claimed] == ["a"]

    async def test_active_kinds(self, saga_log: SagaLog) -> None:
        """Active kinds lists the (name, version) of unfinished sagas only."""
        await saga_log.create(record("a", name="one"), started())
        await saga_log.create(record("b", name="two", status=SagaStatus.COMPENSATED), started())
        await saga_log.create(record("c", name="three", status=SagaStatus.COMPENSATING), started())
        assert await saga_log.active_kinds() == {("one", 1), ("three", 1)}


class TestList:
    async def test_filters_and_order(self, saga_log: SagaLog) -> None:
        """List filters by name and status, newest first, with a limit."""
        await saga_log.create(record("a", name="x", created_at=1.0), started())
        await saga_log.create(record("b", name="y", created_at=2.0), started())
        await saga_log.create(
            record("c", name="x", created_at=3.0, status=SagaStatus.FAILED), started()
        )
        assert [r.saga_id for r in await saga_log.list()] == ["c", "b", "a"]
        assert [r.saga_id for r in await saga_log.list(name="x")] == ["c", "a"]
        assert [r.saga_id for r in await saga_log.list(status=SagaStatus.FAILED)] == ["c"]
        assert [r.saga_id for r in await saga_log.list(limit=1)] == ["c"]

    async def test_statuses_and_times(self, saga_log: SagaLog) -> None:
        """List filters by any of several statuses, by creation, last write and deadline
        times (strictly before), and every filter given must match."""
        await saga_log.create(record("a", created_at=1.0), started())
        await saga_log.create(record("b", created_at=2.0, status=SagaStatus.COMPENSATING), [])
        await saga_log.create(record("c", created_at=3.0, status=SagaStatus.FAILED), [])
        await saga_log.create(record("d", name="x", created_at=4.0), [])
        # "a" is written later: its updated_at moves on, its created_at does not
        await saga_log.update(
            "a", SagaUpdate([LogEntry(EntryKind.STEP_STARTED, at=10.0)]), revision=0, owner="me"
        )
        late = record("e", created_at=5.0)
        late.deadline_at = 7.0
        await saga_log.create(late, [])

        async def ids(**filters: Any) -> list[str]:
            return [r.saga_id for r in await saga_log.list(**filters)]

        active = {SagaStatus.RUNNING, SagaStatus.COMPENSATING}
        assert await ids(statuses=active) == ["e", "d", "b", "a"]
        assert await ids(statuses=[SagaStatus.FAILED, SagaStatus.COMPLETED]) == ["c"]
        assert await ids(statuses=[]) == []
        assert await ids(statuses=active, status=SagaStatus.RUNNING) == ["e", "d", "a"]
        assert await ids(statuses=active, name="x") == ["d"]
        assert await ids(created_before=3.0) == ["b", "a"]
        assert await ids(updated_before=4.0) == ["c", "b"]
        assert await ids(updated_before=4.5, statuses=active) == ["d", "b"]
        assert await ids(deadline_before=7.5) == ["e"]
        assert await ids(deadline_before=7.0) == []
        assert await ids(statuses=active, updated_before=100.0, limit=2) == ["e", "d"]

    async def test_counts(self, saga_log: SagaLog) -> None:
        """Counts gives the number of sagas per status, for one name or all; statuses with
        none are left out."""
        assert await saga_log.counts() == {}
        await saga_log.create(record("a"), started())
        await saga_log.create(record("b"), started())
        await saga_log.create(record("c", status=SagaStatus.FAILED), started())
        await saga_log.create(record("d", name="x", status=SagaStatus.COMPLETED), started())
        assert await saga_log.counts() == {
            SagaStatus.RUNNING: 2,
            SagaStatus.FAILED: 1,
            SagaStatus.COMPLETED: 1,
        }
        assert await saga_log.counts(name="x") == {SagaStatus.COMPLETED: 1}
        assert await saga_log.counts(name="nobody") == {}
        await saga_log.update("a", SagaUpdate([], SagaStatus.COMPENSATING), revision=0, owner="me")
        assert (await saga_log.counts(name="s"))[SagaStatus.COMPENSATING] == 1


class TestOwnLeases:
    async def test_own_lapsed_lease_is_not_reclaimed(self, saga_log: SagaLog) -> None:
        """An orchestrator does not claim its own sagas back (it is driving them) unless it
        released them."""
        await saga_log.create(record("lapsed", owner="me", lease=5.0), started())
        await saga_log.create(record("released", owner="me", lease=5.0), started())
        await saga_log.release("me", ["released"])
        claimed = await saga_log.claim("me", kinds={("s", 1)}, lease=30.0, now=10.0)
        assert [r.saga_id for r in claimed] == ["released"]
        taken = await saga_log.claim("other", kinds={("s", 1)}, lease=30.0, now=10.0)
        assert [r.saga_id for r in taken] == ["lapsed"]


class TestIncarnations:
    """A lease is held by an (owner, incarnation) pair: an orchestrator restarted under the
    same name is a new incarnation, and its predecessor's sagas are not its own."""

    async def test_renew_covers_only_the_incarnation(self, saga_log: SagaLog) -> None:
        """Renewal extends the leases of the caller's incarnation only: those an earlier
        incarnation of the same owner left behind run out."""
        await saga_log.create(record("mine", lease=5.0, incarnation="now"), started())
        await saga_log.create(record("left", lease=5.0, incarnation="before"), started())
        await saga_log.create(record("plain", lease=5.0), started())
        assert await saga_log.renew("me", incarnation="now", until=99.0) == 1
        leases = {
            saga_id: rec.lease_expires_at
            for saga_id in ("mine", "left", "plain")
            if (rec := await saga_log.get(saga_id)) is not None
        }
        assert leases == {"mine": 99.0, "left": 5.0, "plain": 5.0}
        # an owner without incarnations (None) is its own holder
        assert await saga_log.renew("me", until=42.0) == 1
        got = await saga_log.get("plain")
        assert got is not None
        assert got.lease_expires_at == 42.0

    async def test_a_predecessors_lapsed_saga_is_claimed_by_its_successor_or_anyone(
        self, saga_log: SagaLog
    ) -> None:
        """Once its lease lapsed, a saga an earlier incarnation held is claimable: by the
        new incarnation of the same owner, and by any other orchestrator. The caller's own
        incarnation's lapsed leases are still not taken back."""
        await saga_log.create(record("left", lease=5.0, incarnation="before"), started())
        await saga_log.create(record("mine", lease=5.0, incarnation="now"), started())
        await saga_log.create(record("other", lease=5.0, incarnation="before"), started())
        claimed = await saga_log.claim(
            "me", incarnation="now", kinds={("s", 1)}, lease=30.0, now=10.0, limit=1
        )
        assert [r.saga_id for r in claimed] in (["left"], ["other"])
        got = await saga_log.get(claimed[0].saga_id)
        assert got is not None
        assert (got.owner, got.incarnation, got.lease_expires_at) == ("me", "now", 40.0)
        assert claimed[0] == got
        more = await saga_log.claim("me", incarnation="now", kinds={("s", 1)}, lease=30.0, now=10.0)
        assert {r.saga_id for r in more} == {"left", "other"} - {claimed[0].saga_id}
        mine = await saga_log.get("mine")
        assert mine is not None
        assert (mine.owner, mine.incarnation, mine.revision) == ("me", "now", 0)
        # anyone else takes the lapsed lease of "now" (and the one it just took, later)
        rest = await saga_log.claim("you", incarnation="x", kinds={("s", 1)}, lease=30.0, now=10.0)
        assert [(r.saga_id, r.owner, r.incarnation) for r in rest] == [("mine", "you", "x")]

    async def test_predecessors_sagas_are_taken_back_at_once(self, saga_log: SagaLog) -> None:
        """With ``predecessors``, a claim also takes, whatever their lease, the sagas held
        under the caller's name by any other incarnation; not other owners' live ones, not
        finished ones, not unknown kinds, not the caller's own incarnation's."""
        await saga_log.create(record("old", lease=500.0, incarnation="first"), started())
        await saga_log.create(record("older", lease=500.0, incarnation="zero"), started())
        await saga_log.create(record("plain", lease=500.0), started())
        await saga_log.create(record("lapsed", owner="gone", lease=5.0), started())
        await saga_log.create(record("alive", owner="other", lease=500.0), started())
        await saga_log.create(record("own", lease=500.0, incarnation="second"), started())
        await saga_log.create(
            record("done", lease=500.0, incarnation="first", status=SagaStatus.COMPLETED),
            started(),
        )
        await saga_log.create(
            record("stranger", name="zz", lease=500.0, incarnation="first"), started()
        )
        # without it, live leases stay where they are
        assert [
            r.saga_id
            for r in await saga_log.claim(
                "me", incarnation="second", kinds={("s", 1)}, lease=30.0, now=1.0
            )
        ] == []
        claimed = await saga_log.claim(
            "me",
            incarnation="second",
            kinds={("s", 1)},
            lease=30.0,
            now=10.0,
            predecessors=True,
        )
        # lapsed leases first, then the predecessors' live ones
        assert claimed[0].saga_id == "lapsed"
        assert {r.saga_id for r in claimed} == {"lapsed", "old", "older", "plain"}
        for rec in claimed:
            assert (rec.owner, rec.incarnation, rec.lease_expires_at) == ("me", "second", 40.0)
            assert rec.revision == 1
            history = await saga_log.history(rec.saga_id)
            assert history[-1].kind is EntryKind.SAGA_CLAIMED
            assert history[-1].owner == "me"
        for saga_id, holder in {
            "alive": ("other", None),
            "own": ("me", "second"),
            "done": ("me", "first"),
            "stranger": ("me", "first"),
        }.items():
            got = await saga_log.get(saga_id)
            assert got is not None
            assert (got.owner, got.incarnation, got.revision) == (*holder, 0)
        # the sagas are the new incarnation's now: renewed by it, not by the old one (which
        # keeps only the saga of a kind the claim did not ask for)
        assert await saga_log.renew("me", incarnation="first", until=99.0) == 1
        assert await saga_log.renew("me", incarnation="second", until=99.0) == 5

    async def test_predecessors_claim_respects_its_limit(self, saga_log: SagaLog) -> None:
        """A claim that takes predecessors' sagas back takes at most *limit* at a time."""
        for n in range(5):
            await saga_log.create(record(f"s{n}", lease=500.0, incarnation="old"), started())
        taken: set[str] = set()
        for _ in range(3):
            claimed = await saga_log.claim(
                "me",
                incarnation="new",
                kinds={("s", 1)},
                lease=30.0,
                now=10.0,
                limit=2,
                predecessors=True,
            )
            assert len(claimed) <= 2
            taken |= {r.saga_id for r in claimed}
        assert taken == {f"s{n}" for n in range(5)}

    async def test_release_gives_up_only_the_incarnation(self, saga_log: SagaLog) -> None:
        """Release frees the leases of the caller's incarnation only (all, or some)."""
        await saga_log.create(record("a", incarnation="now"), started())
        await saga_log.create(record("b", incarnation="now"), started())
        await saga_log.create(record("c", incarnation="before"), started())
        await saga_log.release("me", ["a", "c"], incarnation="now")
        await saga_log.release("me", incarnation="another")
        leases = {
            saga_id: rec.lease_expires_at
            for saga_id in ("a", "b", "c")
            if (rec := await saga_log.get(saga_id)) is not None
        }
        assert leases == {"a": 0.0, "b": 100.0, "c": 100.0}
        await saga_log.release("me", incarnation="now")
        got = await saga_log.get("b")
        assert got is not None
        assert got.lease_expires_at == 0.0
        # released: claimable at once, by the same incarnation too
        claimed = await saga_log.claim(
            "me", incarnation="now", kinds={("s", 1)}, lease=5.0, now=1.0
        )
        assert {r.saga_id for r in claimed} == {"a", "b"}

    async def test_next_expiry(self, saga_log: SagaLog) -> None:
        """The earliest lease a claim by this incarnation could take: not its own live
        ones, only unfinished sagas of the wanted kinds; a released saga counts as 0."""
        kinds = {("s", 1)}
        assert await saga_log.next_expiry("me", incarnation="now", kinds=kinds) is None
        await saga_log.create(record("own", lease=3.0, incarnation="now"), started())
        await saga_log.create(
            record("done", owner="x", lease=1.0, status=SagaStatus.COMPENSATED), started()
        )
        await saga_log.create(record("stranger", name="zz", owner="x", lease=2.0), started())
        assert await saga_log.next_expiry("me", incarnation="now", kinds=kinds) is None
        await saga_log.create(record("theirs", owner="x", lease=50.0), started())
        await saga_log.create(record("left", lease=40.0, incarnation="before"), started())
        assert await saga_log.next_expiry("me", incarnation="now", kinds=kinds) == 40.0
        assert await saga_log.next_expiry("me", incarnation="now", kinds={("zz", 1)}) == 2.0
        assert await saga_log.next_expiry("me", incarnation="now", kinds=set()) is None
        # another incarnation sees "own" as someone else's
        assert await saga_log.next_expiry("me", incarnation="later", kinds=kinds) == 3.0
        await saga_log.release("me", ["own"], incarnation="now")
        assert await saga_log.next_expiry("me", incarnation="now", kinds=kinds) == 0.0


def operator_entry(kind: EntryKind, at: float = 5.0) -> LogEntry:
    failure = Failure(None, "OperatorAborted", "aborted by alice: why", details={"by": "alice"})
    return LogEntry(kind, at=at, failure=failure, owner="alice")


class TestIntervene:
    async def test_writes_over_the_holder_and_frees_the_lease(self, saga_log: SagaLog) -> None:
        """An operator's write lands whoever holds the saga: entries, status, steps and
        failure as for update, the revision goes up, the lease is free (lease 0) and the
        owner stays named; the holder's next write at its old revision is refused."""
        await saga_log.create(record("a", owner="orch", lease=500.0), started())
        entry = operator_entry(EntryKind.OPERATOR_ABORTED)
        assert entry.failure is not None
        rev = await saga_log.intervene(
            "a",
            SagaUpdate(
                [entry],
                SagaStatus.COMPENSATING,
                {"x": StepState(StepStatus.STARTED, 1, 0)},
                failure=entry.failure,
            ),
            revision=0,
        )
        assert rev == 1
        got = await saga_log.get("a")
        assert got is not None
        assert (got.status, got.revision, got.owner, got.lease_expires_at) == (
            SagaStatus.COMPENSATING,
            1,
            "orch",
            0.0,
        )
        assert got.updated_at == 5.0
        assert got.failure == entry.failure
        assert got.steps == {"x": StepState(StepStatus.STARTED, 1, 0)}
        assert await saga_log.history("a") == [*started(), entry]
        with pytest.raises(ConcurrencyError) as refused:
            await saga_log.update("a", SagaUpdate([], SagaStatus.RUNNING), revision=0, owner="orch")
        assert not isinstance(refused.value, LeaseLost)
        # set free: its owner's upkeep does not renew it, and a claimer (its owner too) takes it
        assert await saga_log.renew("orch", until=999.0) == 0
        claimed = await saga_log.claim("orch", kinds={("s", 1)}, lease=30.0, now=10.0)
        assert [r.saga_id for r in claimed] == ["a"]
        assert claimed[0].status is SagaStatus.COMPENSATING

    async def test_a_finished_saga_can_be_written(self, saga_log: SagaLog) -> None:
        """A FAILED saga (no live lease) is written too, and claimable again once active."""
        await saga_log.create(record("f", status=SagaStatus.FAILED, lease=1.0), started())
        await saga_log.intervene(
            "f",
            SagaUpdate(
                [operator_entry(EntryKind.OPERATOR_RETRIED)],
                SagaStatus.COMPENSATING,
                {"x": StepState(StepStatus.COMPENSATING, 3, 0)},
            ),
            revision=0,
        )
        claimed = await saga_log.claim("other", kinds={("s", 1)}, lease=30.0, now=10.0)
        assert [r.saga_id for r in claimed] == ["f"]
        assert claimed[0].steps["x"] == StepState(StepStatus.COMPENSATING, 3, 0)
        await saga_log.create(record("r", status=SagaStatus.FAILED), started())
        await saga_log.intervene(
            "r",
            SagaUpdate([operator_entry(EntryKind.OPERATOR_RESOLVED)], SagaStatus.RESOLVED),
            revision=0,
        )
        got = await saga_log.get("r")
        assert got is not None
        assert got.status is SagaStatus.RESOLVED
        assert await saga_log.counts() == {SagaStatus.COMPENSATING: 1, SagaStatus.RESOLVED: 1}
        assert [r.saga_id for r in await saga_log.list(status=SagaStatus.RESOLVED)] == ["r"]
        assert await saga_log.active_kinds() == {("s", 1)}

    async def test_stale_revision_and_unknown_saga(self, saga_log: SagaLog) -> None:
        """An intervention at an old revision is refused and changes nothing; an unknown
        saga says so."""
        await saga_log.create(record("a", lease=500.0), started())
        await saga_log.update("a", SagaUpdate([]), revision=0, owner="me")
        update = SagaUpdate([operator_entry(EntryKind.OPERATOR_ABORTED)], SagaStatus.COMPENSATING)
        with pytest.raises(ConcurrencyError):
            await saga_log.intervene("a", update, revision=0)
        got = await saga_log.get("a")
        assert got is not None
        assert (got.status, got.revision, got.lease_expires_at) == (SagaStatus.RUNNING, 1, 500.0)
        assert len(await saga_log.history("a")) == 1
        with pytest.raises(SagaNotFoundError):
            await saga_log.intervene("zzz", update, revision=0)


class TestTimers:
    async def test_list_by_overdue_step_timer(self, saga_log: SagaLog) -> None:
        """timer_before finds sagas with a step whose timeout or retry time is before it."""
        timed = record("timed", created_at=1.0)
        timed.steps = {
            "done": StepState(StepStatus.SUCCEEDED, 1, 0),
            "x": StepState(StepStatus.STARTED, 1, 0, timeout_at=20.0),
        }
        waiting = record("waiting", created_at=2.0)
        waiting.steps = {"y": StepState(StepStatus.FAILED, 1, 1, retry_at=30.0)}
        untimed = record("untimed", created_at=3.0)
        untimed.steps = {"z": StepState(StepStatus.STARTED, 1, 0)}
        for rec in (timed, waiting, untimed):
            await saga_log.create(rec, started())

        async def ids(at: float) -> list[str]:
            return [r.saga_id for r in await saga_log.list(timer_before=at)]

        assert await ids(20.0) == []
        assert await ids(25.0) == ["timed"]
        assert await ids(31.0) == ["waiting", "timed"]
        assert [r.saga_id for r in await saga_log.list(timer_before=31.0, limit=1)] == ["waiting"]


def fingerprinted(saga_id: str, fingerprint: str | None, **kwargs: Any) -> SagaRecord:
    rec = record(saga_id, **kwargs)
    rec.fingerprint = fingerprint
    return rec


class TestFingerprints:
    async def test_fingerprint_round_trips(self, saga_log: SagaLog) -> None:
        """A saga's fingerprint is kept as written, and a record without one reads back None."""
        await saga_log.create(fingerprinted("a", "f1"), started())
        await saga_log.create(record("b"), started())
        a, b = await saga_log.get("a"), await saga_log.get("b")
        assert a is not None
        assert b is not None
        assert (a.fingerprint, a.held) == ("f1", None)
        assert (b.fingerprint, b.held) == (None, None)

    async def test_claim_takes_only_the_hosted_fingerprint(self, saga_log: SagaLog) -> None:
        """With fingerprints, a saga of another definition under the same name and version is
        not claimed; one recorded without a fingerprint still is."""
        await saga_log.create(fingerprinted("same", "f1", lease=1.0), started())
        await saga_log.create(fingerprinted("changed", "f0", lease=1.0), started())
        await saga_log.create(fingerprinted("legacy", None, lease=1.0), started())
        claimed = await saga_log.claim(
            "other", kinds={("s", 1)}, lease=10.0, now=5.0, fingerprints={("s", 1): "f1"}
        )
        assert sorted(r.saga_id for r in claimed) == ["legacy", "same"]
        changed = await saga_log.get("changed")
        assert changed is not None
        assert (changed.owner, changed.revision) == ("me", 0)
        # without fingerprints, the kind alone decides (as before)
        claimed = await saga_log.claim("third", kinds={("s", 1)}, lease=10.0, now=50.0)
        assert sorted(r.saga_id for r in claimed) == ["changed", "legacy", "same"]

    async def test_hold_marks_expired_sagas_of_one_definition(self, saga_log: SagaLog) -> None:
        """hold() marks the unfinished sagas of that definition whose lease expired, once, and
        records it; a live lease, another definition and a finished saga are left alone."""
        await saga_log.create(fingerprinted("old", "f0", lease=1.0), started())
        await saga_log.create(fingerprinted("live", "f0", lease=100.0), started())
        await saga_log.create(fingerprinted("new", "f1", lease=1.0), started())
        await saga_log.create(
            fingerprinted("done", "f0", lease=1.0, status=SagaStatus.COMPLETED), started()
        )
        held = await saga_log.hold("s", 1, "f0", note="step 'x' is gone", now=5.0, owner="o")
        assert held == ["old"]
        old = await saga_log.get("old")
        assert old is not None
        assert (old.held, old.revision, old.owner, old.status) == (
            "step 'x' is gone",
            1,
            "me",
            SagaStatus.RUNNING,
        )
        entry = (await saga_log.history("old"))[-1]
        assert (entry.kind, entry.owner, entry.at) == (EntryKind.SAGA_HELD, "o", 5.0)
        assert entry.failure == Failure(None, "DefinitionChanged", "step 'x' is gone")
        for other in ("live", "new", "done"):
            got = await saga_log.get(other)
            assert got is not None
            assert (got.held, got.revision) == (None, 0)
        # once held, not again
        assert await saga_log.hold("s", 1, "f0", note="again", now=6.0, owner="o") == []
        assert [r.saga_id for r in await saga_log.list(held=True)] == ["old"]
        assert "old" not in [r.saga_id for r in await saga_log.list(held=False)]
        # an orchestrator hosting the saga's own definition claims it, and the mark goes
        claimed = await saga_log.claim(
            "back", kinds={("s", 1)}, lease=10.0, now=7.0, fingerprints={("s", 1): "f0"}
        )
        assert "old" in [r.saga_id for r in claimed]
        got = await saga_log.get("old")
        assert got is not None
        assert (got.held, got.owner) == (None, "back")
        assert [r.held for r in claimed if r.saga_id == "old"] == [None]

    async def test_define_keeps_the_first_record(self, saga_log: SagaLog) -> None:
        """A definition is kept once per (name, version, fingerprint)."""
        first = DefinitionRecord("s", 1, "f1", {"steps": [{"name": "x"}], "data": {}}, 1.0)
        await saga_log.define(first)
        await saga_log.define(DefinitionRecord("s", 1, "f1", {"steps": []}, 2.0))
        await saga_log.define(DefinitionRecord("t", 2, "f9", {"steps": []}, 3.0))
        found = await saga_log.versions(name="s")
        assert found == [SagaVersion("s", 1, "f1", {}, 0, first)]

    async def test_versions_count_per_definition(self, saga_log: SagaLog) -> None:
        """versions() counts sagas per (name, version, fingerprint) and status, with the
        held ones and each definition's record."""
        defined = DefinitionRecord("s", 1, "f1", {"steps": [], "data": {}}, 1.0)
        await saga_log.define(defined)
        await saga_log.create(fingerprinted("a", "f1"), started())
        await saga_log.create(
            fingerprinted("b", "f1", status=SagaStatus.COMPLETED, lease=1.0), started()
        )
        await saga_log.create(fingerprinted("c", "f0", lease=1.0), started())
        await saga_log.create(fingerprinted("d", None), started())
        await saga_log.create(fingerprinted("e", "f1", name="t"), started())
        await saga_log.hold("s", 1, "f0", note="changed", now=5.0, owner="o")
        found = await saga_log.versions()
        assert found == [
            SagaVersion("s", 1, None, {SagaStatus.RUNNING: 1}),
            SagaVersion("s", 1, "f0", {SagaStatus.RUNNING: 1}, held=1),
            SagaVersion("s", 1, "f1", {SagaStatus.RUNNING: 1, SagaStatus.COMPLETED: 1}, 0, defined),
            SagaVersion("t", 1, "f1", {SagaStatus.RUNNING: 1}),
        ]
        assert found[2].total == 2
        active = await saga_log.versions(name="s", statuses=(SagaStatus.COMPLETED,))
        assert active == [SagaVersion("s", 1, "f1", {SagaStatus.COMPLETED: 1}, 0, defined)]
        assert await saga_log.versions(statuses=()) == []
