"""Where the parallel parts run: the task runner a flow is given, and fanning tasks out over it.

``parallel.runner: local`` leaves a flow as it is (Prefect's default thread-pool task runner);
``dask`` gives it prefect-dask's ``DaskTaskRunner`` on a running cluster (``parallel.address``) or on a
``LocalCluster`` of ``parallel.n_workers`` processes started for the run. Dask and prefect-dask are
imported only then. The tasks themselves are the same either way, and :func:`run_tasks` also runs them
one after another when there is no flow run at all (a plain function call, a notebook, a benchmark).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TypeVar

from weakflow.tasks.lib.config import ParallelConfig

F = TypeVar("F")


def make_task_runner(cfg: ParallelConfig):  # -> prefect TaskRunner
    """The task runner ``cfg`` names: Prefect's ``ThreadPoolTaskRunner`` or a ``DaskTaskRunner``."""
    if cfg.runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise RuntimeError("parallel.runner=dask needs the prefect-dask package (pip install prefect-dask)") from exc
    if cfg.address is not None:
        return DaskTaskRunner(address=cfg.address)
    import dask

    # worker processes that may start processes of their own (cleanlab's find_label_issues uses a
    # multiprocessing pool); Dask's default daemonic workers may not
    dask.config.set({"distributed.worker.daemon": False})
    # processes: torch and numpy hold the GIL in places, so threads of one process would not scale;
    # no dashboard: it needs bokeh and a free port, and nothing here reads it
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.n_workers, "threads_per_worker": cfg.threads_per_worker,
                                          "processes": True, "dashboard_address": None})


def with_runner(flow: F, cfg: ParallelConfig) -> F:
    """``flow`` unchanged under ``runner: local``; else the same flow on the configured Dask runner
    (and Prefect's temporary API, if that is what this process uses, shared with the workers)."""
    if cfg.runner == "local":
        return flow
    share_prefect_api()
    return flow.with_options(task_runner=make_task_runner(cfg))  # type: ignore[attr-defined]


_SHARED_API: list = []  # the settings context that points this process (and its workers) at one API


def share_prefect_api() -> None:
    """With no ``PREFECT_API_URL``, Prefect runs a temporary local API per process, and every Dask worker
    process would start one of its own (and leave it behind). Start this process's now and name it in
    the settings the task runner ships to the workers and in the environment local workers inherit, so
    all task runs report to it. A remote cluster needs ``PREFECT_API_URL`` set to a server it can reach."""
    import os

    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    if _SHARED_API or settings.api.url or not settings.server.ephemeral.enabled:
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the per-process singleton Prefect's own client would start
    _await_slow_start(server)
    # a generous start-up wait: Prefect's 20 s default was exceeded on a loaded 2-core machine
    server.start(timeout=max(120.0, float(settings.server.ephemeral.startup_timeout_seconds)))
    os.environ["PREFECT_API_URL"] = server.api_url
    context = temporary_settings(updates={PREFECT_API_URL: server.api_url})
    context.__enter__()  # for the rest of the process, like the temporary API itself
    _SHARED_API.append(context)


def in_flow_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def run_tasks(task: Any, calls: Sequence[tuple]) -> list:
    """Run ``task`` once per argument tuple and return the results in call order.

    Inside a flow run every call is submitted to the flow's task runner (threads, or Dask workers) and
    all run at once; outside one (no task runner to submit to) they run here, one after another, as
    plain function calls. A failed call raises its own exception either way."""
    if not calls:
        return []
    if not in_flow_run():
        return [task.fn(*args) for args in calls]
    with _without_parent_inputs():
        futures = [task.submit(*args) for args in calls]
    return [f.result() for f in futures]


def _without_parent_inputs():  # -> a context manager
    """Prefect ships the context of the task run that submits, its parameters included, with every task it
    sends to a Dask worker. Submitted from inside a stage, that is the stage's whole input (the training
    table, the pictures' cache) once per task: 12 MB a task for 2,000 pictures (measured), the whole training
    table for a table. The submitted tasks take their own arguments; the stage's stay here (the parent link
    is kept)."""
    import contextlib

    from prefect.context import TaskRunContext

    parent = TaskRunContext.get()
    if parent is None or not parent.parameters:
        return contextlib.nullcontext()
    return parent.model_copy(update={"parameters": {}})


def on_dask_worker() -> bool:
    """True inside a task running on a Dask worker (never imports distributed itself)."""
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def limit_worker_threads() -> None:
    """On a Dask worker, one torch thread per task: the worker's threads are the parallelism, and
    torch's default (one thread per core) on every worker would oversubscribe the machine."""
    if on_dask_worker():
        import torch

        torch.set_num_threads(1)


def _await_slow_start(server, seconds: float = 120.0) -> None:
    """An earlier ``start()`` (weakflow run's pre-start) that timed out on a loaded machine leaves its
    server process coming up; starting again would launch a second one on the same port and leave one
    behind. Wait for the first to answer instead."""
    import time

    import httpx

    process = getattr(server, "server_process", None)
    if server.running or process is None or process.poll() is not None:
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                server.running = True
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
