"""Stage 1, validate: read the data, run the Great Expectations suite, stop the run on failure."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import mlflow

from weakflow.data_checks.suite import DataValidationError, ValidationReport, run_suite
from weakflow.tasks.lib.stage import stage_task
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config
from weakflow.data_checks.labels import check_class_set, check_label_spelling
from weakflow.tasks.lib.data import (DataError, PipelineData, assemble, class_set, read_label_columns, read_raw,
                                     resolve_data_spec)
from weakflow.tasks.lib.pool import pool_rows, scan_pool


def load_and_validate(cfg: Config, docs_dir: Path | None = None) -> tuple[PipelineData, ValidationReport]:
    """Plain-function stage: raises DataError (unreadable file) or DataValidationError (failed suite)."""
    spec = resolve_data_spec(cfg)
    if spec.unlabeled_path is not None:  # streamed: columns, types and finiteness, never all in memory
        scan_pool(spec.unlabeled_path, spec.feature_columns, cfg.pseudo_label.chunk_rows, spec.text_columns)
    raw = read_raw(spec)
    classes = class_set(raw)
    voting = bool(spec.weak_label_columns or cfg.weak_labels.rules or cfg.weak_labels.labeling_functions)
    check_class_set(raw, classes, voting)  # one line each, before the suite: the class set, labels misspelt by case
    check_label_spelling(raw, classes)
    raw = read_label_columns(raw, classes)  # integer classes: a weak column of 0, 1 and "skip" holds integers
    report = run_suite(raw, classes, cfg.validation.min_gold_per_class, docs_dir,
                       test_copies=cfg.governance.exact_duplicates == "fail",
                       repeated_rows=cfg.governance.repeated_rows)
    if not report.success:
        raise DataValidationError(report)
    return assemble(raw, classes, cfg.selection.folds), report


@stage_task("validate")
def validate(cfg: Config, parent_run_id: str, experiment_id: str) -> PipelineData:
    with tracking.stage_run("validate", parent_run_id, experiment_id), tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "data_docs"
        try:
            data, report = load_and_validate(cfg, docs)
        except DataValidationError as exc:
            _log_report(exc.report)
            raise
        except DataError as exc:  # unreadable file: nothing to validate, but the reviewer sees why
            mlflow.set_tag("validation", "failed")
            mlflow.log_text(f"{exc}\n", "validation/summary.txt")
            raise
        _log_report(report)
        for frame, path, name, context in ((data.train, data.spec.train_path, "train", "training"),
                                           (data.test, data.spec.test_path, "test", "testing")):
            log_dataset(frame, path, name, context, data.label)
        counts = data.provenance_counts()
        mlflow.log_metrics({f"rows_{k}": v for k, v in counts.items()} | {"rows_test": len(data.test)})
        if data.spec.unlabeled_path is not None:
            mlflow.log_metric("rows_pool", pool_rows(data.spec.unlabeled_path))
        split_counts = data.train["split"].value_counts().to_dict()
        mlflow.log_metrics({f"rows_{k}": int(v) for k, v in split_counts.items()})
        tracking.log_json({"provenance": counts, "splits": split_counts, "classes": data.classes}, "data/provenance.json")
        return data


def log_dataset(frame, path: Path, name: str, context: str, label: str) -> None:
    """Record the table as an MLflow dataset input (digest, schema, row count, source path)."""
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": both mean a local file
        warnings.filterwarnings("ignore", message=".*interpreted in multiple ways.*")
        warnings.filterwarnings("ignore", message=".*integer column.*")  # schema hint; labels are never missing here
        dataset = mlflow.data.from_pandas(frame, source=str(Path(path).resolve()), name=name, targets=label)
        mlflow.log_input(dataset, context=context)


def _log_report(report: ValidationReport) -> None:
    mlflow.log_metrics({"expectations_evaluated": report.evaluated, "expectations_failed": len(report.failures)})
    mlflow.set_tag("validation", "passed" if report.success else "failed")
    tracking.log_json(report.result, "validation/result.json")
    mlflow.log_text(report.summary() + "\n", "validation/summary.txt")
    if report.docs_dir is not None and report.docs_dir.exists():
        mlflow.log_artifacts(str(report.docs_dir), "validation/data_docs")
