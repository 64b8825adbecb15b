"""The training pipeline as a Prefect flow: the one composition (``flows/compose.py``) run with
:class:`flows.recorded.RecordedSteps`, under one MLflow pipeline run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import mlflow
from prefect import flow

from weakflow.flows.compose import compose
from weakflow.flows.recorded import RecordedSteps
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config, dump_config
from weakflow.tasks.lib.results import Evaluation, Registration
from weakflow.tasks.lib.steps import RunContext


@dataclass
class PipelineResult:
    tracking_uri: str
    experiment_id: str
    run_id: str
    stages: list[tuple[str, str]]  # (stage, one-line figures) for the summary table
    registration: Registration
    evaluation: Evaluation


@flow(name="weakflow-training", log_prints=True)
def training_pipeline(cfg: Config) -> PipelineResult:
    """The composition with every stage a Prefect task in its own MLflow run, under one pipeline run."""
    experiment_id = tracking.configure(cfg.tracking)
    started = datetime.now().astimezone()
    with mlflow.start_run(run_name=tracking.pipeline_run_name(cfg.tracking.model_name, started),
                          experiment_id=experiment_id, tags=tracking.pipeline_tags(cfg)) as parent:
        mlflow.log_text(dump_config(cfg), "config.yaml")
        tracking.log_headline_params(cfg)
        ctx = RunContext.of(cfg, parent.info.run_id, experiment_id, started)
        published, outcome = compose(cfg, ctx, RecordedSteps(ctx))
    return PipelineResult(mlflow.get_tracking_uri(), experiment_id, ctx.parent_run_id, published.stages,
                          published.registration, outcome.evaluation)


def run_training(cfg: Config) -> PipelineResult:
    """The pipeline on the task runner ``cfg.parallel`` names: unchanged (Prefect's thread pool) under
    ``runner: local``, a DaskTaskRunner under ``dask``. The flow is the same either way."""
    from weakflow.tasks.lib.parallel import with_runner

    return with_runner(training_pipeline, cfg.parallel)(cfg)
