"""Prefect deployments: scheduled training, interval monitoring, and retraining on drift.

``weakflow deploy`` (or ``bash deploy/servers.sh schedule``) registers three things against the
Prefect API in ``PREFECT_API_URL`` and then keeps running as the process that executes their runs:

- ``weakflow-training/scheduled``: the training pipeline on ``--cron``;
- ``weakflow-monitoring/interval``: the monitoring flow every ``--interval`` seconds;
- a trigger on the training deployment: a ``weakflow.drift.detected`` event for this model starts a run.

Neither deployment runs twice at once: each has a concurrency limit of 1 that cancels a new run while
one is active (``CANCEL_NEW``; queueing them would only replay the pile-up later), and the trigger
fires at most once per model version within ``monitoring.alert_cooldown_minutes`` (Prefect's reactive
``within`` window, per ``prefect.resource.id``), on top of the monitoring flow's own per-version cool-down.

Both flows take the whole typed config as their parameter, so a deployment runs exactly the config it
was registered with.
"""

from __future__ import annotations

from datetime import timedelta

from weakflow.tasks.lib.config import Config

TRAINING_DEPLOYMENT = "scheduled"
MONITORING_DEPLOYMENT = "interval"


def one_at_a_time():
    """Deployment concurrency: one active run; a run that would be a second is cancelled, not queued."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def build_deployments(cfg: Config, cron: str = "0 3 * * *", interval_s: float = 900.0) -> list:
    from prefect.events import DeploymentEventTrigger

    from weakflow.flows.monitor import monitoring_flow
    from weakflow.flows.pipeline import training_pipeline
    from weakflow.monitoring.alerts import DRIFT_EVENT

    params = {"cfg": cfg.model_dump(mode="json")}
    on_drift = DeploymentEventTrigger(
        name=f"retrain {cfg.tracking.model_name} on drift",
        expect={DRIFT_EVENT},
        match={"weakflow.model.name": cfg.tracking.model_name},
        for_each={"prefect.resource.id"},  # one cool-down per model version
        within=timedelta(minutes=cfg.monitoring.alert_cooldown_minutes),  # reactive: fire, then ignore until it ends
        parameters=params,
    )
    training = training_pipeline.to_deployment(
        name=TRAINING_DEPLOYMENT, cron=cron, parameters=params, triggers=[on_drift], concurrency_limit=one_at_a_time(),
        description="the weakflow training pipeline: nightly, and whenever drift is detected",
        tags=["weakflow", "training"])
    monitoring = monitoring_flow.to_deployment(
        name=MONITORING_DEPLOYMENT, interval=timedelta(seconds=interval_s), parameters=params,
        concurrency_limit=one_at_a_time(),
        description="drift of the prediction log against the champion's training reference",
        tags=["weakflow", "monitoring"])
    return [training, monitoring]


def serve_deployments(cfg: Config, cron: str, interval_s: float) -> None:
    """Register the deployments and execute their runs until interrupted (Prefect's ``serve``)."""
    from prefect import serve

    serve(*build_deployments(cfg, cron, interval_s))
