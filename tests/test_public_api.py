"""The public surface is deliberate: pinned, sorted, complete, and shown as ``pysaga.X``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pysaga

EXPECTED = (
    "Broker",
    "BrokerClosed",
    "BrokerError",
    "BrokerUnavailable",
    "BusinessError",
    "Choreography",
    "ChoreographyObserver",
    "ConcurrencyError",
    "DeadLetter",
    "DeadlineExceeded",
    "DecodeError",
    "DefinitionRecord",
    "EntryKind",
    "Envelope",
    "Failure",
    "HandlerContext",
    "Inbox",
    "InboxRecord",
    "InboxTransaction",
    "Inspector",
    "InvalidURLError",
    "LeaseLost",
    "LogEntry",
    "MessagingError",
    "Operator",
    "OperatorActionRefused",
    "Orchestrator",
    "OutboxMessage",
    "Participant",
    "PysagaError",
    "RemoteCall",
    "RemoteStepError",
    "Retry",
    "Saga",
    "SagaDefinitionError",
    "SagaIdTaken",
    "SagaLog",
    "SagaNotFoundError",
    "SagaNotRegisteredError",
    "SagaOutcome",
    "SagaRecord",
    "SagaStatus",
    "SagaUpdate",
    "SagaVersion",
    "SchemaVersionError",
    "Step",
    "StepCall",
    "StepContext",
    "StepError",
    "StepEvents",
    "StepKind",
    "StepState",
    "StepStatus",
    "StoreError",
    "Timeline",
    "TimelineEvent",
    "TransactionalInbox",
    "UnknownMessageType",
    "__version__",
    "new_saga_id",
)

SRC = Path(pysaga.__file__).parent


def test_exports_are_pinned_and_sorted() -> None:
    """Any change to the public API shows up here as a diff."""
    assert isinstance(pysaga.__all__, tuple)
    assert pysaga.__all__ == EXPECTED
    assert list(pysaga.__all__) == sorted(pysaga.__all__, key=lambda n: (n[0].islower(), n))
    for name in pysaga.__all__:
        assert hasattr(pysaga, name), name


def test_public_names_belong_to_pysaga() -> None:
    """Tracebacks and docs show pysaga.Saga, not pysaga.definition.Saga."""
    for name in pysaga.__all__:
        if not name.startswith("__"):
            assert getattr(pysaga, name).__module__ == "pysaga", name


def test_every_public_module_declares_all() -> None:
    """Each public module has a tuple __all__ listing only names it defines."""
    for path in sorted(SRC.rglob("*.py")):
        if any(part.startswith("_") and part != "__init__.py" for part in path.parts[-2:]):
            continue
        tree = ast.parse(path.read_text())
        found = [
            node
            for node in tree.body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        ]
        assert found, f"{path.name} has no __all__"
        assert isinstance(found[0].value, ast.Tuple), f"{path.name}: __all__ must be a tuple"


def test_typed_package() -> None:
    """The package ships its py.typed marker."""
    assert (SRC / "py.typed").exists()


def test_core_imports_no_adapter_or_client_library() -> None:
    """Importing pysaga loads no store or broker adapter and no client library."""
    code = (
        "import sys, pysaga\n"
        "bad = [m for m in sys.modules if m.startswith(('pysaga.stores.', 'pysaga.brokers.',"
        " 'aio_pika', 'aiokafka', 'asyncpg', 'opentelemetry.sdk'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_adapters_do_not_import_each_other() -> None:
    """A store or broker module imports only the core, its own family (``sqlite`` and
    ``sqlite_inbox``) and its own client library."""
    for package in ("stores", "brokers"):
        modules = {p.stem for p in (SRC / package).glob("*.py")}
        for path in sorted((SRC / package).glob("*.py")):
            family = path.stem.split("_")[0]
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                    other = node.module.split(".")[0]
                    if other in modules and not other.startswith("_"):
                        assert other.split("_")[0] == family, (
                            f"{package}/{path.name} imports the adapter {other}"
                        )
