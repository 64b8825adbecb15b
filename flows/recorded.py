"""The flow's runner of a stage (wiring, beside the flow that uses it): a Prefect task, under the stage
time limit, inside the stage's own MLflow run.

The composition (``flows/compose.py``) calls ``steps.run(STAGE, ...)``; here that becomes a Prefect task
named after the stage (made once per stage, when first run), whose body runs under
``limits.stage_seconds`` (:func:`tasks.lib.stage.run_limited`), opens the stage's nested MLflow run, shows an
epoch bar for a training stage, computes, and records (or records what a failed stage found, then raises).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from weakflow.tasks.lib.stage import prefect_task, run_limited
from weakflow.tasks.lib.steps import RunContext, Stage

if TYPE_CHECKING:
    from weakflow.tasks.lib.data import PipelineData
    from weakflow.tasks.lib.review import Champion

R = TypeVar("R")


@dataclass
class RecordedSteps:
    """Runs each stage as a Prefect task inside its MLflow stage run, under the pipeline run ``ctx`` names."""

    ctx: RunContext
    _tasks: dict[str, Any] = field(default_factory=dict)

    def run(self, stage: Stage[R], *args: Any, **kwargs: Any) -> R:
        if stage.name not in self._tasks:
            self._tasks[stage.name] = prefect_task(stage.name, self._limited(stage))
        return self._tasks[stage.name](*args, **kwargs)

    def champion(self, data: PipelineData) -> Champion:
        """The registry's champion, loaded under the stage time limit (a hung registry fails the run)."""
        from weakflow.tasks.report.build import load_champion

        def load() -> Champion:
            start = time.perf_counter()
            found = load_champion(self.ctx.model_name, data)
            return replace(found, seconds=time.perf_counter() - start)

        return run_limited("champion", load, (), {}, self.ctx.stage_seconds)

    def _limited(self, stage: Stage[R]) -> Any:
        seconds = self.ctx.stage_seconds

        def within_limit(*args: Any, **kwargs: Any) -> R:
            return run_limited(stage.name, self._body, (stage, args, kwargs), {}, seconds)

        within_limit.__name__ = within_limit.__qualname__ = stage.name  # Prefect's task key and run names
        return within_limit

    def _body(self, stage: Stage[R], args: tuple, kwargs: dict) -> R:
        from weakflow.tasks.lib import tracking
        from weakflow.tasks.lib.progress import epoch_bar

        assert self.ctx.parent_run_id is not None and self.ctx.experiment_id is not None
        with tracking.stage_run(stage.name, self.ctx.parent_run_id, self.ctx.experiment_id):
            if stage.settings is not None:
                stage.settings(*args, **kwargs)
            try:
                if stage.progress is not None:
                    description, total = stage.progress(*args, **kwargs)
                    with epoch_bar(description, total) as bar:
                        result = stage.compute(*args, on_epoch=bar, **kwargs)
                else:
                    result = stage.compute(*args, **kwargs)
            except Exception as exc:
                if stage.record_error is not None:
                    stage.record_error(exc, *args, **kwargs)
                raise
            if stage.record is not None:
                recorded = stage.record(result, *args, **kwargs)
                if recorded is not None:
                    result = recorded
            return result
