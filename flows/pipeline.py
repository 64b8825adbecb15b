"""The training pipeline: validate -> governance -> weak_labels -> weak_train -> pseudo_label ->
pseudo_governance -> full_train -> evaluate -> register.

Only wiring lives here; each stage is a Prefect task in ``tasks/`` over a plain function.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
from prefect import flow

from tasks import tracking
from tasks.config import Config, dump_config
from tasks.evaluate import Evaluation, evaluate
from tasks.full_train import full_train
from tasks.governance import governance, pseudo_governance
from tasks.pseudo_label import PseudoLabels, pseudo_label
from tasks.register import Provenance, Registration, register
from tasks.report import pipeline_note
from tasks.validate import validate
from tasks.weak_labels import WeakLabels, weak_labels
from tasks.weak_train import WeakModel, weak_train


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
    started = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    with mlflow.start_run(run_name=f"pipeline-{started}", experiment_id=experiment_id,
                          tags={"weakflow.stage": "pipeline"}) as parent:
        pid = parent.info.run_id
        mlflow.log_text(dump_config(cfg), "config.yaml")
        mlflow.log_params({"data.source": cfg.data.source, "seed": cfg.seed, "weak_train.method": cfg.weak_train.method,
                           "weak_labels.aggregation": cfg.weak_labels.aggregation,
                           "pseudo_label.policy": cfg.pseudo_label.policy,
                           "pseudo_label.threshold": cfg.pseudo_label.threshold,
                           "full_train.strategy": cfg.full_train.strategy})

        data = validate(cfg, pid, experiment_id)
        data, checks = governance(data, cfg, pid, experiment_id)
        labels = weak_labels(data, cfg, pid, experiment_id)
        weak = weak_train(data, labels, cfg, pid, experiment_id)
        pseudo = pseudo_label(data, weak, cfg, pid, experiment_id)
        pseudo, pseudo_checks = pseudo_governance(data, pseudo, cfg, pid, experiment_id)
        final = full_train(data, pseudo, cfg, pid, experiment_id)
        evaluation = evaluate(data, weak, final, cfg, pid, experiment_id, labels, pseudo)
        provenance = Provenance(labels.stats.to_dict("records"), pseudo.kept_count, pseudo.holdout_precision,
                                checks.summary() | pseudo_checks.summary(), checks.dropped | pseudo_checks.dropped)
        registration = register(data, final, evaluation, cfg, pid, experiment_id, provenance)  # + verdict in the report

        rounds = (f"; {len(final.rounds.rounds)} self-training round(s), {final.rounds.stop_reason}"
                  if final.rounds is not None else "")
        stages = summarize(data.provenance_counts(), labels, cfg.weak_train.method, weak, pseudo,
                           final.best_dev_accuracy, FullSummary(cfg.full_train.strategy, rounds), evaluation, registration,
                           provenance.governance)
        mlflow.log_metrics({"test_accuracy": evaluation.final.accuracy,
                            "gold_only_test_accuracy": evaluation.gold_only.accuracy})
        mlflow.set_tags({"model_version": registration.version, "model_alias": registration.alias,
                         "mlflow.note.content": "\n".join(f"- **{s}**: {f}" for s, f in stages)
                         + pipeline_note(evaluation)} | registration.review_tags)
    return PipelineResult(mlflow.get_tracking_uri(), experiment_id, pid, stages, registration, evaluation)


def run_training(cfg: Config) -> PipelineResult:
    """The pipeline on the task runner ``cfg.parallel`` names: unchanged (Prefect's thread pool) under
    ``runner: local``, a DaskTaskRunner under ``dask``. The flow is the same either way."""
    from tasks.parallel import with_runner

    return with_runner(training_pipeline, cfg.parallel)(cfg)


@dataclass
class FullSummary:
    strategy: str
    rounds: str  # "" or "; 2 self-training rounds (...)"


def summarize(counts: dict[str, int], labels: WeakLabels, method: str, weak: WeakModel, pseudo: PseudoLabels,
              full_dev: float | None, full: FullSummary, evaluation: Evaluation,
              registration: Registration, governance_summary: dict[str, str]) -> list[tuple[str, str]]:
    precision = f"{pseudo.holdout_precision:.3f}" if pseudo.holdout_precision is not None else "n/a"
    lo, hi = float(pseudo.stream.thresholds.min()), float(pseudo.stream.thresholds.max())
    thresholds = f"{lo:.2f}" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}-{hi:.2f}"
    accuracy = {r["source"]: r.get("accuracy") for r in labels.stats.to_dict("records")}
    sources = ", ".join(f"{s} {a:.2f}" if a is not None and a == a else f"{s} n/a" for s, a in accuracy.items())
    rho = weak.figures.get("clid_dev_spearman")
    return [
        ("validate", "passed; rows " + ", ".join(f"{k} {v}" for k, v in counts.items())),
        ("governance", ", ".join(f"{k} {v.split(' found; ')[0]}" + ("" if v.endswith("; none") else
                                  f" ({v.split(' found; ')[1]})") for k, v in governance_summary.items())),
        ("weak_labels", f"{len(labels.row_ids)} weak training rows; source accuracy on gold: {sources}"),
        ("weak_train", f"{method}: gold-dev accuracy {weak.best_dev_accuracy or 0:.3f}"
                       + (f"; CLID vs dev-accuracy rank correlation {rho:.2f}" if rho is not None else "")),
        ("pseudo_label", f"{pseudo.policy.kind} thresholds {thresholds} after temperature "
                         f"{pseudo.calibration.temperature:.2f}: kept {pseudo.kept_count} of {pseudo.candidates}; "
                         f"precision on held-out gold {precision}"),
        ("full_train", f"{full.strategy}: best gold-dev accuracy {full_dev or 0:.3f}" + full.rounds),
        ("evaluate", f"test accuracy {evaluation.final.accuracy:.4f} (gold-only {evaluation.gold_only.accuracy:.4f}, "
                     f"weak model {evaluation.weak.accuracy:.4f}); macro-F1 {evaluation.final.macro_f1:.4f}; "
                     f"ECE {evaluation.final.ece:.4f}"),
        ("register", f"{registration.model_name} v{registration.version} -> {registration.alias} "
                     f"({registration.decision.reason})"),
    ]
