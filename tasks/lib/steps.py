"""How the pipeline's one composition (``flows/compose.py``) runs a stage: the stage's two halves and the
runner that calls them.

A :class:`Stage` is a computing half (pure: typed values in, a typed result out, no MLflow, no Prefect)
and a recording half (what of it goes to the tracking store). A :class:`Steps` runner decides what happens
around them: :class:`PlainSteps` (benchmarks, tests) computes and records nothing; the flow's runner
(``flows/recorded.py``) runs each stage as a Prefect task under its time limit, inside its own MLflow
run, computes, then records. Both run the very same sequence of the very same compute halves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from weakflow.tasks.lib.data import PipelineData
    from weakflow.tasks.lib.review import Champion

R = TypeVar("R")


@dataclass(frozen=True)
class RunContext:
    """What every stage may know about the run it is part of (instead of the whole config and two ids)."""

    seed: int
    device: str
    workspace: Path
    stage_seconds: float = 7200.0  # limits.stage_seconds: each stage's time limit under the flow
    parent_run_id: str | None = None  # the pipeline's MLflow run; None when nothing is recorded
    experiment_id: str | None = None
    model_name: str = "weakflow-model"  # the registered model's name (tracking.model_name)
    started: datetime = field(default_factory=lambda: datetime.now().astimezone())
    spread_training: bool = False  # parallel.runner dask with parallel.training: fold models train as tasks

    def folder(self, name: str) -> Path:
        """A folder of this run's files in the workspace (e.g. its pseudo-label sets), one per pipeline run."""
        return Path(self.workspace) / name / (self.parent_run_id or "unrecorded")

    @property
    def recorded(self) -> bool:
        return self.parent_run_id is not None

    @classmethod
    def of(cls, cfg: Any, parent_run_id: str | None = None, experiment_id: str | None = None,
           started: datetime | None = None) -> RunContext:
        """The context of a run of ``cfg`` (a :class:`tasks.lib.config.Config`)."""
        return cls(cfg.seed, cfg.device, cfg.tracking.workspace, cfg.limits.stage_seconds, parent_run_id,
                   experiment_id, cfg.tracking.model_name, started or datetime.now().astimezone(),
                   cfg.parallel.runner == "dask" and cfg.parallel.training)


OnEpoch = Callable[[Any], None]


@dataclass(frozen=True)
class Stage(Generic[R]):
    """One pipeline stage: ``compute(*args, **kwargs) -> R`` and ``record(result, *args, **kwargs)``, which
    logs what the stage did into the active (the stage's own) MLflow run and returns the result as recorded
    (the same object, or a copy with what the store assigned, e.g. a registered version).

    ``settings(*args, **kwargs)`` logs what the stage runs under (its config section) before it computes, so
    a stage that fails or runs out of time still shows it. ``record_error(error, *args, **kwargs)`` logs a
    failed stage's findings before the error goes on (a reviewer of a failed run needs them most).
    ``progress(*args, **kwargs) -> (description, epochs)``: the stage trains; the flow's runner shows an
    epoch bar and hands ``compute`` its callback as ``on_epoch``."""

    name: str
    compute: Callable[..., R]
    record: Callable[..., R | None] | None = None
    record_error: Callable[..., None] | None = None
    progress: Callable[..., tuple[str, int]] | None = None
    settings: Callable[..., None] | None = None


class Steps(Protocol):
    """Runs a stage of the composition (and is the composition's one way to the tracking store)."""

    def run(self, stage: Stage[R], *args: Any, **kwargs: Any) -> R: ...

    def champion(self, data: PipelineData) -> Champion | None:
        """The current champion (None when nothing is recorded: no registry to read)."""
        ...


@dataclass
class PlainSteps:
    """Compute halves only, in this thread, timed: what the benchmarks measure and tests run in memory."""

    times: dict[str, float] = field(default_factory=dict)

    def run(self, stage: Stage[R], *args: Any, **kwargs: Any) -> R:
        with self.timed(stage.name):
            return stage.compute(*args, **kwargs)

    def champion(self, data: PipelineData) -> Champion | None:
        return None

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start
