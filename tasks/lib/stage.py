"""One decorator for every Prefect task of weakflow: no caching, no persisted result, and a time limit.

A stage that hangs (a deadlocked library call, a stuck file system) must fail its run with a clear
message, never hold a scheduled deployment (one active run) forever. Prefect's own task timeout raises
*into* the task's thread, which a thread blocked inside C code (a lock, a pool join) never notices; so
the body runs in a worker thread and the caller waits for it with a deadline. On expiry the stage's
MLflow run is marked FAILED, :class:`StageTimeout` is raised in the flow, and the stuck thread is told to
stop (:class:`StageAbandoned` is raised in it the moment it runs Python again, so an abandoned stage
never goes on to register or promote anything); until then it stays behind as a daemon (the CLI exits the
process right after).
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_LIMIT_SECONDS = 7200.0  # when a task gets no Config (limits.stage_seconds is the setting)

# The MLflow run a stage opened (tasks.tracking.stage_run records it), so a timed-out stage's run can be
# closed as FAILED by the thread that gave up waiting on it.
_open_run: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("weakflow_stage_run", default=None)


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


def _limit_of(args: tuple, kwargs: dict) -> float:
    from weakflow.tasks.lib.config import Config

    for value in (*args, *kwargs.values()):
        if isinstance(value, Config):
            return value.limits.stage_seconds
    return DEFAULT_LIMIT_SECONDS


def run_limited(name: str, fn: Callable[..., Any], args: tuple, kwargs: dict, seconds: float) -> Any:
    """``fn(*args, **kwargs)`` in a daemon thread (same context variables: Prefect's run context, MLflow
    ids); its result or exception, or :class:`StageTimeout` once ``seconds`` pass."""
    holder: dict[str, str] = {}
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
    worker.join(seconds)
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


def stage_task(name: str, *, limited: bool = True) -> Callable[[F], F]:
    """``@task(name=..., cache_policy=NO_CACHE, persist_result=False)`` with the body under the time
    limit of the Config among its arguments (``limited=False``: sub-steps of a limited stage, e.g. shard
    tasks that may run on Dask workers)."""

    def wrap(fn: F) -> F:
        if not limited:
            return task(name=name, cache_policy=NO_CACHE, persist_result=False)(fn)

        @functools.wraps(fn)
        def within_limit(*args: Any, **kwargs: Any) -> Any:
            return run_limited(name, fn, args, kwargs, _limit_of(args, kwargs))

        return task(name=name, cache_policy=NO_CACHE, persist_result=False)(within_limit)

    return wrap
