"""What is recorded of a governance check (by the governance stages' recording halves, and in every
self-training round's run): its finding tables, counts, drops and actions, also when a check failed."""

from __future__ import annotations

import mlflow

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.checks import Findings, GovernanceError, verdict


def log_findings(findings: Findings, prefix: str = "governance") -> None:
    """Tables, counts, drops and actions into the active run (also when a check failed)."""
    mlflow.set_tag("governance", verdict(findings))
    for check, table in findings.tables.items():
        tracking.log_frame(table, prefix, check)
    metrics = {f"{check}_found": findings.count(check) for check in findings.tables if not check.endswith("_all")}
    metrics |= {f"dropped_{k}": v for k, v in findings.dropped.items()}
    mlflow.log_metrics(metrics)
    mlflow.set_tags({f"governance.{k}": v for k, v in findings.actions.items()})
    tracking.log_json({"actions": findings.actions, "dropped": findings.dropped,
                       "counts": {c: findings.count(c) for c in findings.tables}}, f"{prefix}/summary.json")


def log_failure(error: GovernanceError, prefix: str = "governance") -> None:
    """A failed check: every finding table it carries, the ``failed`` tag, and the reason in
    ``<prefix>/summary.txt`` (a reviewer of a failed run needs the pairs most)."""
    if error.findings is not None:
        log_findings(error.findings, prefix)
    mlflow.set_tag("governance", "failed")
    mlflow.log_text(f"{error}\n", f"{prefix}/summary.txt")
