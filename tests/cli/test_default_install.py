"""The ``pysaga`` command in a default install (``pip install pysaga-core``, no extras): the
test environment has every extra, so this builds a virtualenv with the project and its core
dependencies only, and runs the installed command there.

Errors are one ``pysaga:`` line with the documented status, never a traceback, also when a
URL names a log whose extra is not installed.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from pysaga import Orchestrator, Saga, StepContext, __version__
from pysaga.stores import from_url

ROOT = Path(__file__).resolve().parents[2]


class Empty(BaseModel):
    pass


pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Install:
    """A virtualenv with pysaga installed without extras."""

    python: Path
    pysaga: Path
    cwd: Path

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.pysaga), *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.cwd,
            env={"PATH": str(self.pysaga.parent), "HOME": str(self.cwd)},
        )


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    where = tmp_path_factory.mktemp("default-install")
    env_dir = where / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"pip install of the project failed:\n{done.stderr}"
    work = where / "work"
    work.mkdir()
    return Install(bin_dir / "python", bin_dir / "pysaga", work)


def one_line(done: subprocess.CompletedProcess[str], status: int) -> str:
    assert (done.returncode, done.stdout) == (status, ""), done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("pysaga: ")
    return done.stderr


def test_the_install_has_no_extras(install: Install) -> None:
    """The virtualenv really lacks the extras' client libraries (else this file tests
    nothing the rest of the suite does not)."""
    for library in ("asyncpg", "aio_pika", "aiokafka"):
        done = subprocess.run(
            [str(install.python), "-c", f"import {library}"], capture_output=True, timeout=60
        )
        assert done.returncode != 0, f"{library} is installed in the default install"


def test_version(install: Install) -> None:
    done = install.run("--version")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"pysaga {__version__}\n"


def test_unknown_saga_id(install: Install) -> None:
    """show, retry, abort, resolve and draw --saga on an id that is not in the log."""

    async def write() -> None:
        saga: Saga[Empty] = Saga("noop", Empty)

        @saga.step
        async def only(data: Empty, ctx: StepContext) -> None:
            pass

        async with Orchestrator(sagas=[saga], log=from_url(url)) as orch:
            await orch.run(saga, Empty())

    url = f"sqlite:///{install.cwd / 'sagas.db'}"
    anyio.run(write)
    (install.cwd / "defs.py").write_text(
        "from pydantic import BaseModel\nfrom pysaga import Saga\n"
        "class Empty(BaseModel): pass\nnoop = Saga('noop', Empty)\n"
        "@noop.step\nasync def only(data, ctx): ...\n"
    )
    for argv in (
        ["show", "nope"],
        ["retry", "nope", "--reason", "x"],
        ["abort", "nope", "--reason", "x"],
        ["resolve", "nope", "--reason", "x"],
        ["draw", "defs:noop", "--saga", "nope"],
    ):
        err = one_line(install.run(*argv, "--log", url), 1)
        assert f"no saga with id 'nope' in {url}" in err


def test_postgres_url_without_the_extra(install: Install) -> None:
    """A PostgreSQL URL is checked without the client library (a malformed one is a usage
    error), and a well-formed one says which extra to install."""
    err = one_line(install.run("list", "--log", "postgresql://u:secret@h:port/db"), 2)
    assert "'port' is not a number" in err
    assert "secret" not in err
    err = one_line(install.run("list", "--log", "postgresql://h/db?bogus=1"), 2)
    assert "unknown option 'bogus'" in err
    err = one_line(install.run("show", "x", "--log", "postgresql://u:secret@127.0.0.1/db"), 1)
    assert "pysaga-core[postgres]" in err
    assert "secret" not in err


def test_missing_log_is_not_created(install: Install) -> None:
    err = one_line(install.run("stats", "--log", "nowhere/absent.db"), 1)
    assert "does not exist" in err
    assert not (install.cwd / "nowhere").exists()
