"""Stage publish, the run's last: the summary onto the pipeline run, then the alias.

Everything a run writes about itself (the per-stage summary, headline metrics, tags) goes first; moving
``champion`` (through :func:`deploy.registry.move_champion`, which records the history rollback follows)
or ``challenger`` is the very last step, so any failure before it leaves the champion serving.
"""

from __future__ import annotations

import mlflow

from weakflow.deploy.registry import CHAMPION, move_champion
from weakflow.tasks.lib import tracking
from weakflow.tasks.report.build import pipeline_note
from weakflow.tasks.lib.results import Published, Registration, RunOutcome
from weakflow.tasks.lib.steps import RunContext, Stage


def summary_lines(o: RunOutcome) -> list[tuple[str, str]]:
    """(stage, one line of figures) for the run summary table and the pipeline run's description: each
    result's own summary."""
    sel = o.selection
    lines = [("validate", o.validated.summary(o.data)),
             ("governance", ", ".join(f"{k} {r.found}" + ("" if r.action == "none" else f" ({r.action})")
                                      for k, r in o.governance.items()))]
    if o.labels is not None:
        lines.append(("weak_labels", o.labels.summary()))
    if o.text is not None and o.text.chosen != "none":
        lines.append(("text_features", o.text.summary()))
    lines.append(("gold_only", f"cross-fitted gold accuracy {sel.oof_accuracy('gold_only'):.3f} "
                               f"({o.data.folds} folds)"))
    if o.weak is not None:
        lines.append(("weak_train", o.weak.summary(sel.oof_accuracy("weak"))))
    if o.pseudo is not None:
        lines.append(("pseudo_label", o.pseudo.summary()))
    if o.final is not None:
        lines.append(("full_train", o.final.summary(sel.oof_accuracy("final"))))
    lines.append(("select", sel.reason))
    lines.append(("evaluate", o.evaluation.summary()))
    lines.append(("register", o.registration.summary()))
    return lines


def move_alias(registration: Registration, parent_run_id: str) -> None:
    """``champion`` through the gates' record (history, who, why), else ``challenger``."""
    client = mlflow.MlflowClient()
    if registration.alias == CHAMPION:
        move_champion(client, registration.model_name, registration.version, "registered",
                      f"pipeline run {parent_run_id}: {registration.decision.reason}")
    else:
        client.set_registered_model_alias(registration.model_name, registration.alias, registration.version)


def compute(ctx: RunContext, outcome: RunOutcome) -> Published:
    return Published(outcome.registration, summary_lines(outcome))


def record(published: Published, ctx: RunContext, outcome: RunOutcome) -> None:
    """The summary, headline metrics and tags onto the pipeline run; then, the very last step, the alias."""
    lines, e, r = published.stages, outcome.evaluation, outcome.registration
    parent_run_id = ctx.parent_run_id
    assert parent_run_id is not None and r.version is not None
    client = mlflow.MlflowClient()
    for key, value in {"test_accuracy": e.shipped.accuracy, "gold_only_test_accuracy": e.gold_only.accuracy,
                       "lift_over_gold_only": e.lift_over_gold_only}.items():
        client.log_metric(parent_run_id, key, value)
    note = "\n".join(f"- **{s}**: {f}" for s, f in lines) + pipeline_note(e)
    tags = ({"model_version": r.version, "model_alias": r.alias, "mlflow.note.content": note}
            | r.review_tags | outcome.selection.tags)
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)
    tracking.log_json({"stages": lines}, "summary.json")
    move_alias(r, parent_run_id)  # the last step of the run


STAGE = Stage("publish", compute, record)
