"""Cross-fitting's fold models as tasks on the flow's task runner (``parallel.runner: dask`` with
``parallel.training: true``), so a cluster trains them at once instead of the stage's process in turn.

Each fold model goes out whole (:class:`~tasks.core.training.Trainer`: network, optimiser, schedule, random
streams, rows) and comes back with its held-out gold logits and weights after every epoch
(:func:`tasks.core.crossfit.train_span`); the stage then chooses the epoch on every fold's gold as before. The
refit, the network shipped, trains in the stage's process once the epoch is chosen: it waits for the fold
models' verdict, and one network gains nothing from being elsewhere.
"""

from __future__ import annotations

import numpy as np

from weakflow.tasks.core.crossfit import Span, Spread, train_span
from weakflow.tasks.core.training import Trainer
from weakflow.tasks.lib.parallel import limit_worker_threads, run_tasks
from weakflow.tasks.lib.stage import stage_task


@stage_task("train_fold_model", limited=False)
def train_span_task(trainer: Trainer, start: int, until: int, held_x: np.ndarray | None) -> Span:
    """One fold model's epochs ``start`` .. ``until`` - 1, as a task (one torch thread on a Dask worker)."""
    limit_worker_threads()
    return train_span(trainer, start, until, held_x)


def on_task_runner(jobs: list[tuple[Trainer, int, int, np.ndarray | None]]) -> list[Span]:
    """:data:`~tasks.core.crossfit.Spread` over the flow's task runner: every job a task, all at once (outside a
    flow run: one after another, here)."""
    return run_tasks(train_span_task, jobs)


def training_spread(enabled: bool) -> Spread | None:
    """The spread a stage hands to cross-fitting: :func:`on_task_runner` where the run asked for it, else None
    (the fold models train in the stage's process, epoch by epoch)."""
    return on_task_runner if enabled else None
