"""The training pipeline: validate -> governance -> weak_labels -> gold_only -> weak_train -> pseudo_label ->
pseudo_governance -> full_train -> select -> evaluate -> register -> publish.

Only wiring lives here; each stage is a Prefect task over plain functions in ``tasks/``. When no row
outside the gold set carries a weak vote, the weak side is skipped and the gold-only model is the one
candidate (the select stage says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import mlflow
from prefect import flow

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config, dump_config
from weakflow.tasks.evaluate import Evaluation, evaluate
from weakflow.tasks.full_train import full_train
from weakflow.tasks.gold_only import gold_only
from weakflow.tasks.governance import governance, pseudo_governance
from weakflow.tasks.publish import RunOutcome, publish
from weakflow.tasks.pseudo_label import pseudo_label
from weakflow.tasks.register import Registration, register
from weakflow.tasks.select import select
from weakflow.tasks.validate import validate
from weakflow.tasks.weak_labels import weak_labels
from weakflow.tasks.weak_train import weak_train


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
    experiment_id = tracking.configure(cfg.tracking)
    started = datetime.now().astimezone()
    with mlflow.start_run(run_name=tracking.pipeline_run_name(cfg, started), experiment_id=experiment_id,
                          tags=tracking.pipeline_tags(cfg)) as parent:
        pid = parent.info.run_id
        mlflow.log_text(dump_config(cfg), "config.yaml")
        tracking.log_headline_params(cfg)

        data = validate(cfg, pid, experiment_id)
        tracking.name_pipeline_run(pid, cfg, started, data)  # the row count and the files' hashes, once read
        data, checks = governance(data, cfg, pid, experiment_id)
        data, labels = weak_labels(data, cfg, pid, experiment_id)
        baseline = gold_only(data, cfg, pid, experiment_id)
        candidates, missing = {"gold_only": baseline}, labels.missing()
        weak = pseudo = final = pseudo_checks = None
        if not missing:
            weak = weak_train(data, labels, baseline, cfg, pid, experiment_id)
            pseudo = pseudo_label(data, weak, cfg, pid, experiment_id)
            pseudo, pseudo_checks = pseudo_governance(data, pseudo, cfg, pid, experiment_id)
            final = full_train(data, labels, weak, pseudo, cfg, pid, experiment_id)
            candidates |= {"weak": weak, "final": final}
        selection = select(data, candidates, cfg, pid, experiment_id, missing)
        shipped_pseudo = getattr(selection.model, "pseudo", None)
        evaluation = evaluate(data, candidates, selection, cfg, pid, experiment_id, labels, shipped_pseudo)
        registration = register(data, selection, evaluation, cfg, pid, experiment_id, labels, checks, pseudo_checks)
        published = publish(RunOutcome(data, labels, weak, pseudo.refit if pseudo else None, final, selection,
                                       evaluation, registration, checks, pseudo_checks), cfg, pid, experiment_id)
    return PipelineResult(mlflow.get_tracking_uri(), experiment_id, pid, published.stages, published.registration,
                          evaluation)


def run_training(cfg: Config) -> PipelineResult:
    """The pipeline on the task runner ``cfg.parallel`` names: unchanged (Prefect's thread pool) under
    ``runner: local``, a DaskTaskRunner under ``dask``. The flow is the same either way."""
    from weakflow.tasks.lib.parallel import with_runner

    return with_runner(training_pipeline, cfg.parallel)(cfg)
