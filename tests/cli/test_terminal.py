"""What ``pysaga`` prints on a terminal: tables that fit its width (``--wide`` for every field
in full), statuses in colour unless ``NO_COLOR`` is set; and nothing of that in a pipe.

The terminal is a real pseudo-terminal of the given size, the command a real process.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import anyio
import pytest

from pysaga import SagaStatus, __version__
from pysaga.cli import main

from .test_cli import Log, _build, run

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")


@pytest.fixture
def sqlite_log(tmp_path: Path) -> Log:
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    return Log(url=url, ids=anyio.run(_build, url))


def on_terminal(columns: int, *argv: str, no_color: bool = False) -> str:
    """Run ``python -m pysaga ARGV`` with its stdout on a terminal *columns* wide; return
    what it printed there (stderr must stay empty and the exit status 0)."""
    main_fd, terminal_fd = pty.openpty()
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    if no_color:
        env["NO_COLOR"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "pysaga", *argv],
        stdout=terminal_fd,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    os.close(terminal_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err) == (0, b"")
    return b"".join(chunks).decode().replace("\r\n", "\n")


class TestTerminal:
    def test_list_fits_the_width(self, sqlite_log: Log) -> None:
        """On an 80-column terminal the table fits: the failure and the name are cut with
        '…', columns that do not fit are left out, and the ids and statuses stay whole."""
        shown = ANSI.sub("", on_terminal(80, "list", "--log", sqlite_log.url))
        header, *rows = shown.splitlines()
        assert all(len(line) <= 80 for line in (header, *rows)), shown
        assert header.split() == ["ID", "NAME", "STATUS", "FAILURE"]
        by_id = {row.split()[0]: row for row in rows}
        assert set(by_id) == set(sqlite_log.ids.values())
        for state, saga_id in sqlite_log.ids.items():
            assert by_id[saga_id].split()[2] == state.value
        assert "…" in by_id[sqlite_log.ids[SagaStatus.COMPENSATED]]

    def test_wider_terminal_shows_more(self, sqlite_log: Log) -> None:
        """A 130-column terminal has room for every column once the owner and the failure
        are cut."""
        shown = ANSI.sub("", on_terminal(130, "list", "--log", sqlite_log.url))
        header, *rows = shown.splitlines()
        assert all(len(line) <= 130 for line in (header, *rows)), shown
        assert len(header.split()) == 8
        assert any(row.endswith("…") for row in rows)

    def test_wide_prints_everything(self, sqlite_log: Log) -> None:
        shown = ANSI.sub("", on_terminal(80, "list", "--wide", "--log", sqlite_log.url))
        header, *rows = shown.splitlines()
        assert header.split() == [
            "ID", "NAME", "VERSION", "STATUS", "CREATED", "UPDATED", "OWNER", "FAILURE",
        ]  # fmt: skip
        assert "…" not in shown
        assert "BusinessError: over the limit" in shown
        assert max(len(row) for row in rows) > 80

    def test_statuses_in_colour(self, sqlite_log: Log) -> None:
        """list, stats and show colour the statuses (and nothing else)."""
        listed = on_terminal(200, "list", "--log", sqlite_log.url)
        assert "\x1b[32mcompleted\x1b[0m" in listed
        assert "\x1b[1;31mfailed\x1b[0m" in listed
        assert not ANSI.search(listed.splitlines()[0])  # the header
        counted = on_terminal(80, "stats", "--log", sqlite_log.url)
        assert "\x1b[35mcompensated\x1b[0m" in counted
        saga_id = sqlite_log.ids[SagaStatus.COMPENSATED]
        shown = on_terminal(80, "show", saga_id, "--log", sqlite_log.url)
        assert shown.splitlines()[0] == f"saga {saga_id}: order v1, \x1b[35mcompensated\x1b[0m"

    def test_no_color(self, sqlite_log: Log) -> None:
        for argv in (["list"], ["stats"], ["show", "stuck-1"]):
            shown = on_terminal(80, *argv, "--log", sqlite_log.url, no_color=True)
            assert "\x1b" not in shown
        # the width is still fitted
        listed = on_terminal(80, "list", "--log", sqlite_log.url, no_color=True)
        assert all(len(line) <= 80 for line in listed.splitlines())

    def test_version(self) -> None:
        assert on_terminal(80, "--version") == f"pysaga {__version__}\n"


class TestPipe:
    def test_nothing_cut_or_coloured(
        self, sqlite_log: Log, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Printing to a pipe or a file, every field is whole and nothing is coloured."""
        monkeypatch.delenv("COLUMNS", raising=False)
        status, out, err = run(capsys, "list", "--log", sqlite_log.url)
        assert (status, err) == (0, "")
        assert "\x1b" not in out
        assert "…" not in out
        assert len(out.splitlines()[0].split()) == 8

    def test_columns_sets_the_width(
        self, sqlite_log: Log, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """COLUMNS gives a width to fit, terminal or not."""
        monkeypatch.setenv("COLUMNS", "100")
        status, out, err = run(capsys, "list", "--log", sqlite_log.url)
        assert (status, err) == (0, "")
        assert all(len(line) <= 100 for line in out.splitlines())
        assert "\x1b" not in out
        status, out, _ = run(capsys, "list", "--wide", "--log", sqlite_log.url)
        assert max(len(line) for line in out.splitlines()) > 100

    def test_version_in_process(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--version"]) == 0
        assert capsys.readouterr().out == f"pysaga {__version__}\n"
