"""The choreography guide's program runs, prints what the page shows, and leaves in the log
what the page says."""

from __future__ import annotations

from pathlib import Path

import pytest

from pysaga import SagaStatus, StepStatus
from pysaga.stores.sqlite import SQLiteSagaLog

from ..docs.test_snippets import load, pasted_output, sqlite_url
from .purchase import wait_history

pytestmark = pytest.mark.anyio


async def test_the_guides_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    snippet = load("choreography", monkeypatch)
    path = tmp_path / "purchases.db"
    ids = await snippet.main(sqlite_url(path))
    assert pasted_output("choreography") == capsys.readouterr().out
    async with SQLiteSagaLog(path) as log:
        declined = await log.get(ids["o-3"])
        assert declined is not None
        assert declined.status is SagaStatus.COMPENSATED
        assert declined.steps["reserve_stock"].status is StepStatus.COMPENSATED
        assert declined.failure is not None
        no_stock = await log.get(ids["o-2"])
        assert no_stock is not None
        assert no_stock.failure is not None
        assert "left" in no_stock.failure.message
        assert len(await wait_history(log, ids["o-1"], 4)) == 4
