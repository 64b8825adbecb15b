"""How a ``weakflow`` command's own process runs: offline defaults, Prefect's temporary API server, a
terminal kept to the command's own one-line reasons, and a fast exit. (The process that supervises it is
``flows/supervisor.py``.)

**Prefect's temporary API server.** With no ``PREFECT_API_URL`` Prefect starts a local API server
subprocess on first use and stops it at interpreter exit. It was left running (issue 26) when a start-up
timed out (Prefect's 20 s default, on a loaded machine; reproduced with a 1 s wait): Prefect marks the
server not running but leaves its process starting, so the next client started a second one on the same
port, got its answers from the first, and at exit stopped only the second. Prefect's code has a second
way: a client created after the exit handler stopped the server (a late log flush, the events worker)
makes a new instance and starts a new server that nothing stops. :func:`start_prefect_api` starts it once,
waits ``limits.prefect_startup_seconds``, stops it if it did not answer (one line naming the setting), and
then pins ``PREFECT_API_URL`` to it for the rest of the process, so no later Prefect call can start another.
``weakflow run`` starts it in the background while it imports the pipeline (``flows/commands.py``).

**The command's exit** (:func:`run_child`): everything registered to run at exit runs, queued Prefect logs
and events are sent while the API is still up, and the interpreter's slow teardown is skipped.

Nothing is imported at module level beyond the standard library: every command imports this module, also
those that never start a flow.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

STARTUP_SETTING = "limits.prefect_startup_seconds"
EXPECTED = ("DataError", "DataValidationError", "GovernanceError", "LabelingFunctionError", "ConfigError",
            "RegistryError", "StageTimeout")  # errors the command reports itself, in one line


# --------------------------------------------------------------------------------------------------------
# the command's process


def quiet_telemetry() -> None:
    """Offline defaults, set at command time (never at import)."""
    for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        os.environ.setdefault(key, value)
    import multiprocessing

    # A library's process pool must never fork this process: Prefect's and MLflow's threads may hold a lock
    # at that instant, and the child waits on it forever (tasks/core/label_issues.py). Spawn starts clean.
    if multiprocessing.get_start_method(allow_none=True) is None:
        multiprocessing.set_start_method("spawn")


def warm_imports() -> None:
    """Import Great Expectations in the background while Prefect starts its temporary API (~5 s of
    waiting on a subprocess); the validate stage then finds it loaded. Python's import lock makes a
    concurrent import of the same module safe: the stage's own import waits for this one to finish.
    Call it only once the caller has imported torch and scipy: SciPy's array helpers read
    ``sys.modules["torch"]`` without importing it, so a torch half-imported by another thread breaks
    GX's import of ``scipy.stats`` (seen under load with a 0.2 s Prefect start-up limit)."""
    import importlib

    threading.Thread(target=importlib.import_module, args=("great_expectations",), daemon=True).start()


def quiet_expected_errors() -> None:
    """Keep the terminal to the command's own one-line reason: Prefect logs a task's or flow's exception with
    its traceback (twice, 76-129 lines) before the command could say what went wrong. Only the console
    handlers are filtered; the run's logs in the Prefect API keep everything."""
    import logging

    class ExpectedErrors(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if not record.name.startswith("prefect"):
                return True
            exc = record.exc_info[1] if record.exc_info else None
            names = {type(exc).__name__} if exc is not None else set()
            return not (names & set(EXPECTED) or any(f"{n}(" in record.getMessage() or f"{n}:" in record.getMessage()
                                                     for n in EXPECTED))

    for handler in logging.getLogger().handlers:
        if "APILog" not in type(handler).__name__:
            handler.addFilter(ExpectedErrors())


def run_child(main: Callable[[], int]) -> None:
    """The command's own process: :func:`main`, then a fast exit. Everything registered to run at exit
    (log handlers, Prefect's temporary API, GX's temporary folders) runs first; only the interpreter's
    teardown of the imported modules (about 3.5 s with torch, MLflow, Prefect and GX loaded) is skipped."""
    import atexit

    from weakflow.flows.supervisor import flush_stdio, start_guard

    start_guard()
    code = main()
    flush_stdio()
    drain_prefect()
    atexit._run_exitfuncs()
    flush_stdio()
    os._exit(code)


# --------------------------------------------------------------------------------------------------------
# Prefect's temporary API server


class PrefectStartupError(RuntimeError):
    """Prefect's temporary API server did not answer in time; the message names the setting."""


_PREFECT_LOCK = threading.Lock()


def start_prefect_api(seconds: float) -> str | None:
    """Start Prefect's temporary local API for this process if it uses one (no ``PREFECT_API_URL``),
    waiting at most ``seconds`` for it to answer, and pin ``PREFECT_API_URL`` to it from then on; returns
    its URL (``None`` when a real server is configured). A server that did not answer in time is stopped
    and :class:`PrefectStartupError` names the setting. Safe to call again (and from several threads)."""
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = str(max(1, round(seconds)))
    with _PREFECT_LOCK:
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        if settings.api.url or not settings.server.ephemeral.enabled:
            return str(settings.api.url) if settings.api.url else None
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # the per-process instance Prefect's own clients would start
        if not server.running:
            try:
                server.start(timeout=seconds)
            except RuntimeError as exc:
                if "Timed out" not in str(exc):
                    raise
                process = getattr(server, "server_process", None)
                exited = process.poll() if process is not None else None
                server.stop()  # the process that did not answer in time is never left starting
                if exited is not None and exited != 3:  # it died (3: port taken, Prefect retries): waiting longer won't help
                    raise PrefectStartupError(
                        f"Prefect's temporary API server did not answer within {seconds:g} s (setting {STARTUP_SETTING}): "
                        f"its process exited with status {exited} while starting, so a longer wait would not help; check "
                        "PREFECT_HOME and its database, or point PREFECT_API_URL at a running Prefect server") from None
                raise PrefectStartupError(
                    f"Prefect's temporary API server did not answer within {seconds:g} s (setting {STARTUP_SETTING}): "
                    f"raise it on a loaded machine, e.g. --set {STARTUP_SETTING}=300, or point PREFECT_API_URL at a "
                    "running Prefect server") from None
        os.environ["PREFECT_API_URL"] = server.api_url
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()  # every thread and later Prefect call now uses this server
        return server.api_url


def prestart_prefect_api(seconds: float) -> Callable[[], None]:
    """:func:`start_prefect_api` in a thread (the server takes seconds to start; the caller imports the
    pipeline meanwhile); the returned function waits for it and raises its error, if any."""
    failure: list[BaseException] = []
    # imported here, in the caller's thread: importing them in the thread while the caller imports the pipeline
    # (Prefect again, MLflow, torch) could meet a partly initialised module
    import prefect.server.api.server  # noqa: F401
    import prefect.settings  # noqa: F401

    def start() -> None:
        try:
            start_prefect_api(seconds)
        except BaseException as exc:  # re-raised by the caller's wait
            failure.append(exc)

    starter = threading.Thread(target=start, name="weakflow-prefect-api", daemon=True)
    starter.start()

    def wait() -> None:
        starter.join()
        if failure:
            raise failure[0]

    return wait


def drain_prefect() -> None:
    """Send queued run logs and events now, while the API is up (left to interpreter exit they were
    drained after the temporary API had stopped, and logging.shutdown waited out its 5 s timeout).
    Nothing to do in a command that never loaded Prefect's workers."""
    if "prefect.logging.handlers" not in sys.modules and "prefect.events.worker" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all()
