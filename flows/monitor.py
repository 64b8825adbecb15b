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
    Check, Contamination, alert_task, alert_text, contamination_task, drift_check_task, load_served_task,
    load_window_task,
)


@dataclass
class MonitorResult:
    model_version: str
    check: Check
    alert: dict | None
    contamination: dict[str, int]  # rows equal/near test rows and training rows ({} when not checked)
    contamination_check: Contamination | None = None  # with its alert and the line the console prints

    def lines(self, name: str) -> list[str]:
        """What ``weakflow monitor`` prints: the contamination finding (when rows were found), then the
        drift verdict as the last line."""
        found = self.contamination_check
        return ([found.line()] if found is not None and found.found else []) + [
            f"{name} v{self.model_version}: {self.check.verdict.text}"
            + (f" | alert {alert_text(self.alert)}" if self.alert else "")]


@flow(name="weakflow-monitoring", log_prints=True)
def monitoring_flow(cfg: Config) -> MonitorResult:
    experiment_id = tracking.configure(TrackingConfig(**{**cfg.tracking.model_dump(),
                                                         "experiment": cfg.monitoring.experiment}))
    served = load_served_task(cfg)
    window = load_window_task(cfg, served)
    check = drift_check_task(cfg, served, window, experiment_id)
    alert = alert_task(cfg, served, check) if check.verdict.drift else None
    found = contamination_task(cfg, served, window, experiment_id)
    contamination = found.counts
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
                  + (f"\n{found.line()}\n" if found.found else "")),
        description=f"drift verdict for {served.name} v{served.version}",
    )
    if found.found:
        print(found.line())
    print(check.verdict.text + (f" | alert {alert_text(alert)}" if alert else ""))
    return MonitorResult(served.version, check, alert, contamination, found)
