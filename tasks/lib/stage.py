"""One decorator for every Prefect task of weakflow: no caching, no persisted result, and a time limit.

A stage that hangs (a deadlocked library call, a stuck file system) must fail its run with a clear
message, never hold a scheduled deployment (one active run) forever. Prefect's own task timeout raises
*into* the task's thread, which a thread blocked inside C code (a lock, a pool join) never notices; so
the body runs in a worker thread and the caller waits for it with a deadline. On expiry the stage's
MLflow run is marked FAILED, :class:`StageTimeout` is raised in the flow, and the stuck thread is told to
stop (:class:`StageAbandoned` is raised in it the moment it runs Python again, so an abandoned stage
never goes on to register or promote anything); until then it stays behind as a daemon (the CLI exits the
process right after).

A stage stuck inside C code that holds the GIL (a catastrophic regular expression) stops every thread of
the process, this watchdog included. Under the ``weakflow`` command each limited stage therefore also
tells the command's supervisor (``flows/supervisor.py``) its deadline (:class:`StageRecord`); the supervisor
kills the command when the stage is still running ``STOP_GRACE_SECONDS`` after it. Prefect is imported when a stage first runs, not when its module is imported (``weakflow
validate`` reads and checks data with the validate stage's module and never starts a flow).
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_LIMIT_SECONDS = 7200.0  # when a task gets no Config (limits.stage_seconds is the setting)

# The MLflow run a stage opened (tasks.tracking.stage_run records it), so a timed-out stage's run can be
# closed as FAILED by the thread that gave up waiting on it.
_open_run: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("weakflow_stage_run", default=None)


STAGES_ENV = "WEAKFLOW_STAGE_DEADLINES"  # set by the weakflow command's supervisor (flows/supervisor.py)


class StageRecord:
    """A limited stage's deadline, as a small JSON file in the folder :data:`STAGES_ENV` names, where the
    command's supervisor reads it (``open`` gives ``None`` without a supervisor: the Python API)."""

    _count = 0
    _lock = threading.Lock()

    def __init__(self, path: Path, fields: dict[str, Any]) -> None:
        self.path, self.fields, self.closed, self._guard = path, fields, False, threading.Lock()
        self._write()

    @classmethod
    def open(cls, stage: str, seconds: float, note: str) -> StageRecord | None:
        folder = os.environ.get(STAGES_ENV)
        if not folder or not Path(folder).is_dir():
            return None
        with cls._lock:
            cls._count += 1
            n = cls._count
        path = Path(folder) / f"{os.getpid()}-{threading.get_ident()}-{n}.json"
        # time.monotonic is CLOCK_MONOTONIC on Linux: the supervisor, another process, reads the same clock
        return cls(path, {"stage": stage, "seconds": seconds, "deadline": time.monotonic() + seconds,
                          "pid": os.getpid(), "note": note, "run_id": None, "tracking_uri": None})

    def set_run(self, run_id: str, tracking_uri: str) -> None:
        with self._guard:
            if self.closed:  # an abandoned stage opening its run late: never write the deadline again
                return
            self.fields |= {"run_id": run_id, "tracking_uri": tracking_uri}
            self._write()

    def close(self) -> None:
        with self._guard:
            self.closed = True
            self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        try:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.fields))
            os.replace(tmp, self.path)
        except OSError:  # the supervisor's folder is gone (it is ending): nothing to tell it
            pass


class StageTimeout(RuntimeError):
    """A stage ran past its time limit; the message names the stage, the limit and the setting."""


class StageAbandoned(BaseException):
    """Raised inside an abandoned stage's thread. A BaseException, so no ``except Exception`` in stage
    code swallows it."""


def record_stage_run(run_id: str) -> None:
    """Called when a stage opens its MLflow run (no-op outside a limited stage)."""
    holder = _open_run.get()
    if holder is not None:
        holder["run_id"] = run_id
        record = holder.get("record")
        if isinstance(record, StageRecord):  # the supervisor marks it FAILED if it must kill the stage
            import mlflow

            record.set_run(run_id, mlflow.get_tracking_uri())


# Said by the supervisor when it kills a stuck stage: what the failed run left in the registry.
AFTER_REGISTRATION = ("register", "publish")


def _outcome_note(name: str) -> str:
    if name in AFTER_REGISTRATION:
        return "the run may have registered a version before it stopped: `weakflow models` shows the registry"
    return "nothing was registered and the current champion is unchanged"


def _limit_of(args: tuple, kwargs: dict) -> float:
    from weakflow.tasks.lib.config import Config

    for value in (*args, *kwargs.values()):
        if isinstance(value, Config):
            return value.limits.stage_seconds
    return DEFAULT_LIMIT_SECONDS


def run_limited(name: str, fn: Callable[..., Any], args: tuple, kwargs: dict, seconds: float) -> Any:
    """``fn(*args, **kwargs)`` in a daemon thread (same context variables: Prefect's run context, MLflow
    ids); its result or exception, or :class:`StageTimeout` once ``seconds`` pass."""
    holder: dict[str, Any] = {"record": StageRecord.open(name, seconds, _outcome_note(name))}
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def body() -> None:
        _open_run.set(holder)
        try:
            outcome["value"] = fn(*args, **kwargs)
        except StageAbandoned:  # the caller gave up on this stage long ago: end quietly
            pass
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=context.run, args=(body,), name=f"weakflow-stage-{name}", daemon=True)
    worker.start()
    try:
        worker.join(seconds)
    finally:  # this thread runs again: the limit below is enforced here, the supervisor need not kill
        if holder["record"] is not None:
            holder["record"].close()
    if worker.is_alive():
        message = (f"stage {name} ran past its time limit of {seconds:g} s (setting limits.stage_seconds) and was "
                   "abandoned; the run failed")
        _stop(worker)
        _fail_run(holder.get("run_id"), message)
        raise StageTimeout(message)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _stop(worker: threading.Thread) -> None:
    """Schedule :class:`StageAbandoned` in ``worker``: it fires at its next Python instruction."""
    if worker.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(StageAbandoned))


def _fail_run(run_id: str | None, message: str) -> None:
    if run_id is None:
        return
    try:
        import mlflow

        client = mlflow.MlflowClient()
        client.set_tag(run_id, "weakflow.failure", message[:5000])
        client.set_terminated(run_id, status="FAILED")
    except Exception:  # the store itself may be what hangs: the run still fails, with the message
        pass


class LazyTask:
    """A Prefect task made when it is first used (called, submitted, ``.fn``), so that importing a stage's
    module does not import Prefect (about 1.5 s): ``weakflow validate`` uses the validate stage's module
    without a flow. Everything else is the Prefect task's own."""

    def __init__(self, make: Callable[[], Any], fn: Callable[..., Any]) -> None:
        self._make, self._task = make, None
        functools.update_wrapper(self, fn)

    @property
    def task(self) -> Any:
        if self._task is None:
            self._task = self._make()
        return self._task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.task(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr in ("_make", "_task"):
            raise AttributeError(attr)
        return getattr(self.task, attr)


def prefect_task(name: str, fn: Callable[..., Any]) -> Any:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(name=name, cache_policy=NO_CACHE, persist_result=False)(fn)


def stage_task(name: str, *, limited: bool = True) -> Callable[[F], F]:
    """``@task(name=..., cache_policy=NO_CACHE, persist_result=False)`` with the body under the time
    limit of the Config among its arguments (``limited=False``: sub-steps of a limited stage, e.g. shard
    tasks that may run on Dask workers), made on first use (:class:`LazyTask`)."""

    def wrap(fn: F) -> F:
        if not limited:
            return LazyTask(lambda: prefect_task(name, fn), fn)  # type: ignore[return-value]

        @functools.wraps(fn)
        def within_limit(*args: Any, **kwargs: Any) -> Any:
            return run_limited(name, fn, args, kwargs, _limit_of(args, kwargs))

        return LazyTask(lambda: prefect_task(name, within_limit), fn)  # type: ignore[return-value]

    return wrap
