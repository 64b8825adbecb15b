"""The monitoring flow: prediction-log window vs the champion's reference -> drift check -> alert.

Only wiring lives here; the steps are in ``tasks/monitor.py`` over ``monitoring/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config, TrackingConfig
from weakflow.tasks.monitor import (
    Check, alert_task, contamination_task, drift_check_task, load_served_task, load_window_task,
)


@dataclass
class MonitorResult:
    model_version: str
    check: Check
    alert: dict | None
    contamination: dict[str, int]


def alert_text(alert: dict) -> str:
    if alert.get("suppressed"):
        return f"suppressed: {alert['suppressed']}"
    return (f"raised (alerts row {alert['alert_id']}, event {alert['event_id'] or 'not emitted'}, "
            f"webhook {alert['webhook'] or 'not configured'})")


@flow(name="weakflow-monitoring", log_prints=True)
def monitoring_flow(cfg: Config) -> MonitorResult:
    experiment_id = tracking.configure(TrackingConfig(**{**cfg.tracking.model_dump(),
                                                         "experiment": cfg.monitoring.experiment}))
    served = load_served_task(cfg)
    window = load_window_task(cfg, served)
    check = drift_check_task(cfg, served, window, experiment_id)
    alert = alert_task(cfg, served, check) if check.verdict.drift else None
    contamination = contamination_task(cfg, served, window, experiment_id)
    r = check.result
    create_markdown_artifact(
        key="drift-verdict",
        markdown=(f"## Drift check: {served.name} v{served.version}\n\n**{check.verdict.text}**\n\n"
                  f"| window rows | drifted feature share | drifted columns | prediction drift p |\n|---|---|---|---|\n"
                  f"| {r.rows} | {r.drift_share:.1%} | {', '.join(r.drifted_columns[:10]) or '-'} | "
                  f"{r.prediction_p if r.prediction_p is not None else '-'} |\n\n"
                  + (f"Quality on {int(r.quality['labelled_rows'])} feedback-labelled rows: accuracy "
                     f"{r.quality['accuracy']:.3f}\n\n" if r.quality else "")
                  + (f"Report: {check.report_uri}\n" if check.report_uri else "No report: too few rows.\n")
                  + (f"\nAlert: {alert_text(alert)}\n" if alert else "")
                  + (f"\nServed rows equal/near to: {contamination}\n" if contamination else "")),
        description=f"drift verdict for {served.name} v{served.version}",
    )
    print(check.verdict.text + (f" | alert {alert_text(alert)}" if alert else ""))
    return MonitorResult(served.version, check, alert, contamination)
