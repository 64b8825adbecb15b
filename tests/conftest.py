"""Shared fixtures: a real Prefect test harness (session scope: it costs ~15 s) and small configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Prefect binds its console log handler to the sys.stderr of the moment it is first imported. Import it here,
# before any test's capsys swaps in a stream that is closed when that test ends (a later flow would then log
# into a closed file, whichever test happened to import Prefect first).
import prefect.main  # noqa: E402,F401  (sets up Prefect's logging)

FAST = [
    "weak_train.epochs=10", "full_train.epochs=10", "gates.min_accuracy=0.5", "pseudo_label.threshold=0.6",
    "weak_train.cnn_width=32", "full_train.cnn_width=32", "weak_train.lr=0.01", "full_train.lr=0.01",
    "report.bootstrap_samples=200", "report.severities=[0.5,1.0]",  # the report's cost in every test pipeline
]


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """One materialised demo for the whole session (its files are read-only inputs)."""
    return tmp_path_factory.mktemp("demo-data")


def free_port() -> int:
    """A loopback port nothing listens on right now (for servers the tests start themselves)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fast_config(workspace: Path, *extra: str):
    from weakflow.tasks.lib.config import load_config

    return load_config(None, [*FAST, f"tracking.workspace={workspace}", *extra])


def fifo_call(fifo: Path, call, seconds: float = 20.0):
    """``call()`` where ``fifo`` (made here if absent) is a named pipe no one writes to: the result, or the exception it
    raised. Reading such a pipe waits for a writer for ever, so a call that would is not awaited: after
    ``seconds`` this fails the test, and then opens the pipe for writing to set the blocked reader free."""
    import threading

    if not fifo.exists():
        os.mkfifo(fifo)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets end of file and returns
        worker.join(seconds)
        pytest.fail(f"the call blocked on the named pipe {fifo} for {seconds:.0f} s")
    return outcome.get("error", outcome.get("value"))
